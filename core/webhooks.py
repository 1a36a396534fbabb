"""Webhooks: signed event deliveries, sent from an outbox.

**Recording.** A job's status change and the delivery that announces it are written in one transaction:
each state change of core/jobs.py calls `record_job_event(s)` before its caller commits, which adds a
`webhook_deliveries` row when the job's webhook asks for that event. The row holds the exact body to
send (the job as `GET /v1/jobs/{id}` shows it at that moment), so a delivery exists if and only if the
change happened, whatever crashes afterwards, and a worker never waits on a receiver. When the last job
of a batch ends, the batch's `completed` event is recorded in that job's transaction, exactly once: the
batch's row is locked before its jobs are counted, so of two jobs ending at once the second to take the
lock sees the first one's commit.

**Sending.** A `Dispatcher` (in `diffq beat`, or `diffq webhooks` alone; any number of them may run)
claims due deliveries, signs each per Standard Webhooks with its owner's current secret (headers
`webhook-id`, `webhook-timestamp`, `webhook-signature`) and POSTs it from a thread pool. Claiming pushes
a delivery's `next_attempt_at` past the time an attempt may take, so another dispatcher leaves it alone
and it comes back due if this one dies mid-send: delivery is at least once, and `webhook-id` (the row's
id) is the same on every attempt for receivers to drop repeats. On Postgres the claim reads with
`FOR UPDATE SKIP LOCKED`, so dispatchers never wait for each other's rows.

A delivery is retried until it is answered 2xx, answered 410 Gone (the receiver asks for no more), or its
`give_up_at` (`webhook_retry_s` after it was recorded) comes; the wait before retry n is
`webhook_backoff_s` · 2^(n-1), capped at `webhook_backoff_max_s`, times a random factor in [0.5, 1]. Every
attempt is recorded in `webhook_attempts`. A receiver that is down or slow delays nothing else: every
attempt has a timeout (`webhook_timeout_s`), and at most `MAX_IN_FLIGHT_PER_URL` attempts go to one URL at
a time, so a hanging receiver holds that many threads and the others keep sending to everyone else.

A running dispatcher deletes deliveries (and their attempts) `webhook_keep_s` after they ended, so the
outbox does not grow for good; pending ones are never deleted.
"""

import logging
import random
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any, NamedTuple

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from core.auth import webhook_secret
from core.batches import batch_state
from core.config import Settings, get_settings
from core.db import db_session
from core.public import render_batch, render_job
from core.storage import get_storage
from core.tables import Batch, Job, JobStatus, WebhookAttempt, WebhookDelivery, utcnow
from core.webhook_urls import WebhookUrlRefused, checked_addresses, pinned_request

logger = logging.getLogger(__name__)

BATCH_COMPLETED = "batch.completed"
# How often a running dispatcher deletes the deliveries kept for over `webhook_keep_s`.
PURGE_EVERY_S = 600
# Two at a time to one URL: a slow receiver still gets its deliveries in parallel, a hanging one can't
# take the whole pool.
MAX_IN_FLIGHT_PER_URL = 2
# How much of a receiver's answer is kept with an attempt that was not a 2xx.
ANSWER_CHARS = 200
USER_AGENT = "diffq-webhooks/1"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    GONE = "gone"  # answered 410: the receiver wants no more
    FAILED = "failed"  # not delivered before give_up_at


def new_message_id() -> str:
    """A delivery's id, sent as `webhook-id`."""
    return f"msg_{uuid.uuid4().hex}"


def _add_delivery(
    session: Session,
    owner: str,
    event: str,
    url: str,
    payload: str,
    job_id: uuid.UUID | None = None,
    batch_id: uuid.UUID | None = None,
) -> None:
    now = utcnow()
    session.add(
        WebhookDelivery(
            id=new_message_id(),
            owner=owner,
            job_id=job_id,
            batch_id=batch_id,
            event=event,
            url=url,
            payload=payload,
            status=DeliveryStatus.PENDING,
            attempts=0,
            next_attempt_at=now,
            give_up_at=now + timedelta(seconds=get_settings().webhook_retry_s),
            created_at=now,
        )
    )


class JobHooks(NamedTuple):
    """What `record_job_events` reads of a job: its webhook and its batch."""

    id: uuid.UUID
    webhook: dict[str, Any] | None
    batch_id: uuid.UUID | None


def record_job_event(session: Session, job_id: uuid.UUID, event: str, hooks: JobHooks | None = None) -> None:
    """Record `event` ("started", "succeeded", "failed", "canceled") of one job; see `record_job_events`.
    `hooks`: the job's webhook and batch, when the caller's UPDATE returned them (a read less)."""
    if hooks is None:
        record_job_events(session, [job_id], event)
    else:
        _record_batches_completed(session, _record_job_events(session, [hooks], event), event)


def record_job_events(session: Session, job_ids: Sequence[uuid.UUID], event: str) -> None:
    """Add a delivery of `event` for each of `job_ids` whose webhook asks for it, and, when `event` ends
    the jobs, the `completed` delivery of each of their batches that has now ended. Called by the state
    change right after its UPDATE, in its transaction: the caller commits both together."""
    batch_ids: set[uuid.UUID] = set()
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        rows = session.execute(select(Job.id, Job.webhook, Job.batch_id).where(Job.id.in_(chunk))).all()
        batch_ids |= _record_job_events(session, [JobHooks(*row) for row in rows], event)
    _record_batches_completed(session, batch_ids, event)


def _record_batches_completed(session: Session, batch_ids: set[uuid.UUID], event: str) -> None:
    if event in JobStatus.FINISHED:
        for batch_id in sorted(batch_ids):
            record_batch_completed(session, batch_id)


def _record_job_events(session: Session, rows: Sequence[JobHooks], event: str) -> set[uuid.UUID]:
    """The deliveries of `event` for the jobs `rows`; their batches' ids."""
    batch_ids: set[uuid.UUID] = set()
    if rows:
        wanted = [row.id for row in rows if row.webhook and event in row.webhook.get("events", ())]
        if wanted:
            settings = get_settings()
            # Read fresh: the session may hold these jobs as they were before the UPDATE.
            jobs = session.scalars(
                select(Job).where(Job.id.in_(wanted)).execution_options(populate_existing=True)
            )
            for job in jobs:
                assert job.webhook is not None
                payload = render_job(job, get_storage(), settings.public_url)
                _add_delivery(session, job.owner, f"job.{event}", job.webhook["url"], payload, job_id=job.id)
        batch_ids.update(row.batch_id for row in rows if row.batch_id is not None)
    return batch_ids


# Batches whose webhook asks for no `completed` event. A batch's webhook is set when it is made and never
# changes, so each process reads it once per batch instead of once per finished job. Bounded.
_NO_COMPLETED_HOOK: dict[uuid.UUID, None] = {}


def record_batch_completed(session: Session, batch_id: uuid.UUID) -> bool:
    """Add the batch's `completed` delivery if its webhook asks for it and every job has ended; True if
    it was added. Exactly once per batch, however many of its jobs end at once. The caller commits."""
    if batch_id in _NO_COMPLETED_HOOK:
        return False
    webhook = session.scalar(select(Batch.webhook).where(Batch.id == batch_id))
    if not webhook or "completed" not in webhook.get("events", ()):
        if len(_NO_COMPLETED_HOOK) >= 10_000:
            _NO_COMPLETED_HOOK.clear()
        _NO_COMPLETED_HOOK[batch_id] = None
        return False
    # Held until the caller commits: whoever ends a job of this batch next counts after this commit.
    batch = session.scalars(
        select(Batch).where(Batch.id == batch_id).with_for_update().execution_options(populate_existing=True)
    ).one()
    state = batch_state(session, batch)
    if not state.done:
        return False
    already = session.scalar(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.batch_id == batch_id, WebhookDelivery.event == BATCH_COMPLETED)
        .limit(1)
    )
    if already is not None:
        return False
    payload = render_batch(batch, state, get_settings().public_url)
    _add_delivery(session, batch.owner, BATCH_COMPLETED, webhook["url"], payload, batch_id=batch.id)
    return True


@dataclass(frozen=True)
class Outgoing:
    """A claimed delivery, with what an attempt needs to send it."""

    id: str
    url: str
    event: str
    payload: str
    secret: str


@dataclass(frozen=True)
class Answer:
    """How an attempt went: the receiver's HTTP status, or why there was none (`error`)."""

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def attempt_lease_s(settings: Settings) -> float:
    """How long a claimed delivery is left to its dispatcher: more than an attempt's connect, write and
    read timeouts together."""
    return 4 * settings.webhook_timeout_s + 60


def backoff_s(attempts: int, settings: Settings) -> float:
    """The wait before the next attempt after `attempts` failed ones: exponential, capped, jittered."""
    ceiling = min(settings.webhook_backoff_max_s, settings.webhook_backoff_s * 2 ** min(attempts - 1, 60))
    return ceiling * random.uniform(0.5, 1.0)


def claim_due(session: Session, limit: int, in_flight: Mapping[str, int] | None = None) -> list[Outgoing]:
    """Take up to `limit` due deliveries, oldest due first, none to a URL that already has
    `MAX_IN_FLIGHT_PER_URL` attempts in flight (`in_flight`: this dispatcher's attempts per URL). The
    caller commits at once, then sends them."""
    settings = get_settings()
    now = utcnow()
    counts = Counter(in_flight or {})
    full = [url for url, count in counts.items() if count >= MAX_IN_FLIGHT_PER_URL]
    query = (
        select(
            WebhookDelivery.id,
            WebhookDelivery.url,
            WebhookDelivery.event,
            WebhookDelivery.payload,
            WebhookDelivery.owner,
            WebhookDelivery.next_attempt_at,
        )
        .where(WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if full:
        query = query.where(WebhookDelivery.url.not_in(full))
    lease_until = now + timedelta(seconds=attempt_lease_s(settings))
    secrets: dict[str, str] = {}
    claimed = []
    for row in session.execute(query).all():
        if counts[row.url] >= MAX_IN_FLIGHT_PER_URL:
            continue
        # Conditional, so that on a database without SKIP LOCKED (SQLite) two dispatchers still can't
        # both take a delivery.
        taken = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == row.id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at == row.next_attempt_at,
            )
            .values(next_attempt_at=lease_until)
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken != 1:
            continue
        counts[row.url] += 1
        if row.owner not in secrets:
            secrets[row.owner] = webhook_secret(session, row.owner)
        claimed.append(Outgoing(row.id, row.url, row.event, row.payload, secrets[row.owner]))
    return claimed


def _answer_error(response: httpx.Response, head: bytes) -> str | None:
    code = response.status_code
    if 200 <= code < 300:
        return None
    if 300 <= code < 400:
        return (
            f"answered {code}, a redirect to {response.headers.get('location', '(no location)')}; redirects "
            "are not followed: point the webhook at the final URL"
        )
    text = head.decode("utf-8", "replace")[:ANSWER_CHARS].strip()
    answered = "answered 410 Gone: no more attempts" if code == 410 else f"answered {code}"
    return f"{answered} ({text})" if text else answered


@cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS settings, made once: loading the CA bundle takes tens of milliseconds."""
    return httpx.create_ssl_context()


def send(outgoing: Outgoing, settings: Settings | None = None) -> Answer:
    """One attempt at a delivery: check where its URL leads now, sign it, POST it there. Never raises for
    what the receiver or the network does; the `Answer` says."""
    settings = settings or get_settings()
    at = utcnow()
    started = time.monotonic()
    status_code: int | None = None
    try:
        address = checked_addresses(outgoing.url, settings.webhook_allow_private)[0]
        url, headers, extensions = pinned_request(outgoing.url, address)
        now = utcnow()
        headers |= {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": outgoing.id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(outgoing.secret).sign(outgoing.id, now, outgoing.payload),
            "diffq-event": outgoing.event,
        }
        # A client per attempt: its connections are to one pinned address, never reused for another host.
        client = httpx.Client(
            verify=_tls_context(), follow_redirects=False, trust_env=False, timeout=settings.webhook_timeout_s
        )
        with (
            client,
            client.stream(
                "POST", url, content=outgoing.payload.encode(), headers=headers, extensions=extensions
            ) as response,
        ):
            head = next(response.iter_bytes(), b"")
        status_code = response.status_code
        error = _answer_error(response, head)
    except WebhookUrlRefused as refused:
        error = f"not sent: {refused}"
    except httpx.HTTPError as failure:
        error = f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
    return Answer(at, status_code, error, round((time.monotonic() - started) * 1000, 3))


def record_answer(session: Session, delivery_id: str, answer: Answer) -> str | None:
    """Record an attempt and what follows from it: delivered, gone (410), retried after a back-off, or
    given up once the next try would come after `give_up_at`. Returns the delivery's new status (None if
    it no longer exists). The caller commits."""
    delivery = session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update()
    ).one_or_none()
    if delivery is None:
        return None
    session.add(
        WebhookAttempt(
            delivery_id=delivery_id,
            at=answer.at,
            status_code=answer.status_code,
            error=answer.error[:1000] if answer.error else None,
            duration_ms=answer.duration_ms,
        )
    )
    now = utcnow()
    delivery.attempts += 1
    if answer.delivered or answer.status_code == 410:
        delivery.status = DeliveryStatus.DELIVERED if answer.delivered else DeliveryStatus.GONE
        delivery.finished_at = now
        return delivery.status
    retry_at = now + timedelta(seconds=backoff_s(delivery.attempts, get_settings()))
    if retry_at > delivery.give_up_at:
        delivery.status = DeliveryStatus.FAILED
        delivery.finished_at = now
    else:
        delivery.next_attempt_at = retry_at
    return delivery.status


def deliveries(session: Session, *conditions: Any) -> list[tuple[WebhookDelivery, list[WebhookAttempt]]]:
    """The deliveries that match `conditions` (e.g. `WebhookDelivery.job_id == id`), oldest first, each
    with its attempts in order."""
    found = list(
        session.scalars(select(WebhookDelivery).where(*conditions).order_by(WebhookDelivery.created_at))
    )
    attempts: dict[str, list[WebhookAttempt]] = {delivery.id: [] for delivery in found}
    for start in range(0, len(found), 500):
        ids = [delivery.id for delivery in found[start : start + 500]]
        for attempt in session.scalars(
            select(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids)).order_by(WebhookAttempt.id)
        ):
            attempts[attempt.delivery_id].append(attempt)
    return [(delivery, attempts[delivery.id]) for delivery in found]


def purge_ended(session: Session, keep_s: float, now: datetime | None = None, limit: int = 1000) -> int:
    """Delete up to `limit` deliveries that ended (delivered, gone or given up) over `keep_s` seconds
    before `now`, with their attempts; returns how many. The caller commits. Pending ones are kept."""
    cutoff = (now or utcnow()) - timedelta(seconds=keep_s)
    ids = session.scalars(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.finished_at.is_not(None), WebhookDelivery.finished_at < cutoff)
        .limit(limit)
    ).all()
    if ids:
        # Attempts first: SQLite enforces the foreign key's ON DELETE CASCADE only when asked to.
        session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(ids)))
        session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids)))
    return len(ids)


class Dispatcher:
    """Sends due deliveries from a pool of `threads` threads until stopped (see the module's docstring).

    `run()` loops: claim what there is room for, start sending it, wait `webhook_poll_s` or until an
    attempt ends. `dispatch_once()` and `wait_idle()` do one round by hand (tests, `diffq webhooks --once`).
    """

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or get_settings().webhook_threads
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="diffq-webhook")
        self._lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()
        self._futures: set[Future[None]] = set()
        self._wake = threading.Event()
        self._stopping = threading.Event()

    def dispatch_once(self) -> int:
        """Claim the due deliveries there is room for and start sending them; returns how many."""
        with self._lock:
            room = self.threads - len(self._futures)
            in_flight = dict(self._in_flight)
        if room <= 0:
            return 0
        with db_session() as session:
            claimed = claim_due(session, room, in_flight)
        for outgoing in claimed:
            with self._lock:
                self._in_flight[outgoing.url] += 1
                future = self._pool.submit(self._attempt, outgoing)
                self._futures.add(future)
            future.add_done_callback(self._done)
        return len(claimed)

    def _attempt(self, outgoing: Outgoing) -> None:
        try:
            answer = send(outgoing)
            with db_session() as session:
                status = record_answer(session, outgoing.id, answer)
            logger.info(
                "webhook %s %s to %s: %s (%s)",
                outgoing.id,
                outgoing.event,
                outgoing.url,
                answer.status_code or answer.error,
                status,
            )
        except Exception:
            # Its lease runs out and it is claimed again.
            logger.exception("webhook %s: could not record its attempt", outgoing.id)
        finally:
            with self._lock:
                self._in_flight[outgoing.url] -= 1
                if self._in_flight[outgoing.url] <= 0:
                    del self._in_flight[outgoing.url]

    def _done(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the attempts in flight have ended; False if `timeout` came first."""
        with self._lock:
            pending = set(self._futures)
        return not wait(pending, timeout=timeout).not_done

    def purge(self) -> int:
        """Delete the deliveries that ended over `webhook_keep_s` ago (none when it is 0); how many."""
        keep_s = get_settings().webhook_keep_s
        if not keep_s:
            return 0
        purged = 0
        while True:
            with db_session() as session:
                count = purge_ended(session, keep_s)
            purged += count
            if count < 1000:
                return purged

    def run(self) -> None:
        """Dispatch until `stop()` is called; every `PURGE_EVERY_S`, purge what has been kept long enough."""
        poll_s = get_settings().webhook_poll_s
        purged_at = 0.0
        while not self._stopping.is_set():
            if time.monotonic() - purged_at >= PURGE_EVERY_S:
                purged_at = time.monotonic()
                try:
                    if purged := self.purge():
                        logger.info("deleted %s ended webhook deliveries (DIFFQ_WEBHOOK_KEEP_S)", purged)
                except Exception:
                    logger.exception("could not delete old webhook deliveries")
            try:
                started = self.dispatch_once()
            except Exception:
                logger.exception("could not claim webhook deliveries; trying again in %s s", poll_s)
                started = 0
            if not started:
                self._wake.wait(poll_s)
                self._wake.clear()

    def start(self) -> threading.Thread:
        """`run()` in a daemon thread of its own."""
        thread = threading.Thread(target=self.run, name="diffq-webhooks", daemon=True)
        thread.start()
        return thread

    def stop(self, wait_s: float | None = None) -> None:
        """Stop claiming, and wait up to `wait_s` for the attempts in flight (an attempt cut short is sent
        again once its lease runs out)."""
        self._stopping.set()
        self._wake.set()
        self.wait_idle(wait_s)
        self._pool.shutdown(wait=False, cancel_futures=True)
