"""Event streams: what a job did, step by step, for clients that watch it live and for the cancel path.

Every job has a stream, and so does every batch. Workers append to it (`JobEvents`): the job's status
changes, every denoising or training step (`progress`: step, total, eta_s, steps_per_s, and a training
step's epoch, loss and lr), a preview becoming available, outputs as they are stored, and the final
status with the outputs or the error. A batch's stream gets its jobs' status changes. The API follows a
stream from any event on (`EventStore.subscribe`) and serves it as Server-Sent Events
(api/routes/events.py), so a client that reconnects with the last id it saw gets exactly what it missed.

Postgres stays the source of truth for status and keeps the coalesced progress (core/progress.py); a
stream is a live view that may be missing or expired, and readers fall back to the database then.

Two stores, one interface:

- `RedisEventStore` (a Redis broker): one Redis Stream per job and per batch, trimmed to about
  `MAXLEN` entries and expiring `events_ttl_s` after its last event. A cancel is a key the API sets
  (`signal_cancel`) and the worker reads in the same round trip that publishes each step, so a running
  job learns of a cancel at its next step without reading Postgres. Previews are Redis strings next to
  the stream, with the same expiry. Subscriptions share one reader per event loop: a single blocking
  XREAD over every followed stream, fanned out to each subscription's queue (core/event_fanout.py), on
  at most `ASYNC_CONNECTIONS` Redis connections per loop.
- `DatabaseEventStore` (the embedded defaults, no Redis): the `job_events` and `job_previews` tables of
  the job database; readers poll them. Its cancel check reads the job's status (a local SQLite read).

Event ids are the store's own (Redis stream ids `1712345678901-0`, table ids `42`) and only ever
compared by the store that made them.
"""

import asyncio
import json
import logging
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from weakref import WeakKeyDictionary

import redis
import redis.asyncio
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from core.config import Settings, get_settings
from core.db import get_engine
from core.event_fanout import LiveSubscription, StreamReader
from core.tables import Job, JobEvent, JobPreview, JobStatus, utcnow

if TYPE_CHECKING:
    from core.jobs import Ended

logger = logging.getLogger(__name__)
T = TypeVar("T")
# (stream, kind, data) of an event to publish
NewEvent = tuple[str, str, dict[str, Any]]

# Event kinds. A job stream ends with a `status` event whose status is final (see `is_final`).
STATUS = "status"
PROGRESS = "progress"
PREVIEW = "preview"
OUTPUTS = "outputs"
# In a batch stream: one of its jobs changed status; and the batch itself was canceled.
JOB = "job"
BATCH = "batch"

# About how many events a stream keeps (Redis trims whole macro nodes, so a little more): a job's
# steps, or a batch's status changes (three per job).
JOB_STREAM_MAXLEN = 2_000
BATCH_PROGRESS_INTERVAL_S = 0.5
BATCH_STREAM_MAXLEN = 150_000


@dataclass(frozen=True)
class Event:
    id: str
    kind: str
    data: dict[str, Any]
    # What a reader made of it once for all its readers (the API: its SSE bytes, when every connection
    # sends the same), since one event read from Redis is fanned out to each subscriber of its stream.
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def is_final(self) -> bool:
        """A job's final status event: nothing follows it in the job's stream."""
        return self.kind == STATUS and self.data.get("status") in JobStatus.FINISHED


def job_stream(job_id: uuid.UUID | str) -> str:
    return f"job:{job_id}"


def batch_stream(batch_id: uuid.UUID | str) -> str:
    return f"batch:{batch_id}"


class BadEventId(ValueError):
    """A Last-Event-ID this store did not make."""


class Subscription(Protocol):
    """A reader's place in one stream (`EventStore.subscribe`): `next` returns the events after the last
    it returned, waiting up to `wait_s` seconds for one (0: returns at once). Use it as a context manager
    (or call `close`), so that the stream stops being followed."""

    after: str

    def __enter__(self) -> "Subscription": ...

    def __exit__(self, *_: object) -> None: ...

    def close(self) -> None: ...

    async def next(self, wait_s: float) -> list["Event"]: ...


class PolledSubscription:
    """A subscription that polls `EventStore.read` (the database store's; the Redis store's live
    subscriptions share one read instead, core/event_fanout.py)."""

    def __init__(self, store: "EventStore", stream: str, after: str) -> None:
        self.store = store
        self.stream = stream
        self.after = after

    def __enter__(self) -> "PolledSubscription":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to release: each `next` reads on its own."""

    async def next(self, wait_s: float) -> list["Event"]:
        """The events after the last returned (at first, after the start id), oldest first; waits up to
        `wait_s` seconds for one when there are none yet (0: returns at once)."""
        events = await self.store.read(self.stream, self.after, wait_s)
        if events:
            self.after = events[-1].id
        return events


class EventStore(ABC):
    """Where streams live. Publishing is synchronous (workers, sync API routes); reading is async (SSE)."""

    # The id before a stream's first event: reading after it reads the whole stream.
    start: str

    def __init__(self, settings: Settings) -> None:
        self.ttl_s = settings.events_ttl_s

    @abstractmethod
    def publish(self, stream: str, kind: str, data: dict[str, Any]) -> str:
        """Append an event (its `data` gets `ts`, the wall-clock time in seconds); return its id."""

    def publish_step(
        self, job_id: uuid.UUID, progress: dict[str, Any], also: Sequence[NewEvent] = ()
    ) -> bool:
        """Append a `progress` event to the job's stream (and the events `also`); True if the job was
        canceled (read with it)."""
        return self.publish_checking(job_id, [(job_stream(job_id), PROGRESS, progress), *also])

    @abstractmethod
    def publish_checking(self, job_id: uuid.UUID, events: Sequence[NewEvent]) -> bool:
        """Append `events`; True if job `job_id` was canceled, read in the same round trip."""

    @abstractmethod
    def signal_cancel(self, job_ids: Iterable[uuid.UUID]) -> None:
        """Tell the workers running these jobs that they were canceled (call after the cancel commits)."""

    @abstractmethod
    def canceled(self, job_id: uuid.UUID) -> bool:
        """Whether the job was canceled, as its worker checks between steps."""

    @abstractmethod
    def put_preview(self, job_id: uuid.UUID, step: int, image: bytes, content_type: str) -> None:
        """Keep `image` as the job's latest preview."""

    @abstractmethod
    def preview(self, job_id: uuid.UUID) -> tuple[int, bytes, str] | None:
        """The job's latest preview: (step, image bytes, content type), or None."""

    @abstractmethod
    async def read(self, stream: str, after: str, wait_s: float) -> list[Event]:
        """The events after id `after`, oldest first; waits up to `wait_s` for one when there are none
        yet (0: returns at once)."""

    def subscribe(self, stream: str, after: str) -> Subscription:
        """Follow `stream` from after id `after` (what an SSE connection does)."""
        return PolledSubscription(self, stream, after)

    @abstractmethod
    def check_id(self, event_id: str) -> str:
        """`event_id` if this store could have made it, else BadEventId."""

    def publish_many(self, events: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        for stream, kind, data in events:
            self.publish(stream, kind, data)


def _stamped(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "ts": round(time.time(), 4)}


# ASCII digits only (`\d` takes any Unicode digit, such as "²"), each part a 64-bit unsigned number.
REDIS_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
DATABASE_ID = re.compile(r"^[0-9]{1,19}$")
# Redis connections of one event loop's asyncio client, and how long a read waits for one of them
# before it fails with redis' ConnectionError.
ASYNC_CONNECTIONS = 16
ASYNC_CONNECTION_WAIT_S = 30


class RedisEventStore(EventStore):
    start = "0-0"

    def __init__(self, url: str, settings: Settings) -> None:
        super().__init__(settings)
        self.url = url
        self.client = redis.Redis.from_url(url)
        # One asyncio client and one stream reader per event loop: a connection belongs to the loop
        # that opened it.
        self._async_clients: WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
            WeakKeyDictionary()
        )
        self._readers: WeakKeyDictionary[asyncio.AbstractEventLoop, StreamReader] = WeakKeyDictionary()

    @staticmethod
    def key(stream: str) -> str:
        return f"diffq:events:{stream}"

    @staticmethod
    def cancel_key(job_id: uuid.UUID | str) -> str:
        return f"diffq:cancel:{job_id}"

    @staticmethod
    def preview_key(job_id: uuid.UUID | str) -> str:
        return f"diffq:preview:{job_id}"

    def _add(self, pipe: Any, stream: str, kind: str, data: dict[str, Any]) -> None:
        maxlen = BATCH_STREAM_MAXLEN if stream.startswith("batch:") else JOB_STREAM_MAXLEN
        key = self.key(stream)
        pipe.xadd(key, {"kind": kind, "data": json.dumps(_stamped(data))}, maxlen=maxlen, approximate=True)
        pipe.expire(key, int(self.ttl_s))

    def publish(self, stream: str, kind: str, data: dict[str, Any]) -> str:
        pipe = self.client.pipeline(transaction=False)
        self._add(pipe, stream, kind, data)
        return pipe.execute()[0].decode()

    def publish_many(self, events: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for stream, kind, data in events:
            self._add(pipe, stream, kind, data)
        pipe.execute()

    def publish_checking(self, job_id: uuid.UUID, events: Sequence[NewEvent]) -> bool:
        # One round trip: the events go out and the cancel flag comes back.
        pipe = self.client.pipeline(transaction=False)
        for stream, kind, data in events:
            self._add(pipe, stream, kind, data)
        pipe.exists(self.cancel_key(job_id))
        return bool(pipe.execute()[-1])

    def signal_cancel(self, job_ids: Iterable[uuid.UUID]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            # Longer than any job may run (the task time limit), so it outlives the run it stops.
            pipe.set(self.cancel_key(job_id), 1, ex=get_settings().task_time_limit_s + 3600)
        pipe.execute()

    def canceled(self, job_id: uuid.UUID) -> bool:
        return bool(self.client.exists(self.cancel_key(job_id)))

    def put_preview(self, job_id: uuid.UUID, step: int, image: bytes, content_type: str) -> None:
        key = self.preview_key(job_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(key, mapping={"step": step, "image": image, "content_type": content_type})
        pipe.expire(key, int(self.ttl_s))
        pipe.execute()

    def preview(self, job_id: uuid.UUID) -> tuple[int, bytes, str] | None:
        found = self.client.hgetall(self.preview_key(job_id))
        if not found:
            return None
        return int(found[b"step"]), found[b"image"], found[b"content_type"].decode()

    def _async_client(self) -> redis.asyncio.Redis:
        """This event loop's client: at most `ASYNC_CONNECTIONS` connections (the shared reader's, and
        those of replays, which wait for one when a burst of clients connects), however many clients."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                self.url, max_connections=ASYNC_CONNECTIONS, timeout=ASYNC_CONNECTION_WAIT_S
            )
            client = self._async_clients[loop] = redis.asyncio.Redis(connection_pool=pool)
        return client

    @staticmethod
    def decode(entry_id: bytes, fields: dict[bytes, bytes]) -> Event:
        """A stream entry as an Event; its JSON as stored is kept in `memo["json"]` (str)."""
        raw = fields[b"data"].decode()
        return Event(entry_id.decode(), fields[b"kind"].decode(), json.loads(raw), memo={"json": raw})

    async def read(self, stream: str, after: str, wait_s: float) -> list[Event]:
        """One stream's own read (a blocking XREAD when it waits); SSE connections `subscribe` instead."""
        client = self._async_client()
        key = self.key(stream)
        if wait_s > 0:
            found = await client.xread({key: after}, block=max(1, int(wait_s * 1000)), count=1000)
            entries = found[0][1] if found else []
        else:
            # XRANGE with an exclusive start: every event after `after`, no waiting.
            entries = await client.xrange(key, min=f"({after}", count=10_000)
        return [self.decode(entry_id, fields) for entry_id, fields in entries]

    def reader(self) -> StreamReader:
        """This event loop's shared stream reader (core/event_fanout.py)."""
        loop = asyncio.get_running_loop()
        reader = self._readers.get(loop)
        if reader is None:
            reader = self._readers[loop] = StreamReader(self._async_client(), self.decode)
        return reader

    def subscribe(self, stream: str, after: str) -> LiveSubscription:
        """Follow `stream` through this loop's shared reader: one XREAD for every open stream."""
        return self.reader().subscribe(self.key(stream), after)

    def check_id(self, event_id: str) -> str:
        if not REDIS_ID.fullmatch(event_id) or max(int(part) for part in event_id.split("-")) >= 2**64:
            raise BadEventId(
                f"Last-Event-ID {event_id!r} is not an id this stream sent (like 1712345678901-0)"
            )
        return event_id


class DatabaseEventStore(EventStore):
    """Streams in the job database's `job_events` table; readers poll it every `poll_s`."""

    start = "0"
    poll_s = 0.1

    def _session(self) -> Session:
        # Its own short transactions, never the caller's: a worker's job session commits on its own rhythm.
        return Session(get_engine())

    def publish(self, stream: str, kind: str, data: dict[str, Any]) -> str:
        with self._session() as session, session.begin():
            event_id = session.scalar(
                insert(JobEvent)
                .values(stream=stream, kind=kind, data=_stamped(data), created_at=utcnow())
                .returning(JobEvent.id)
            )
            if kind == STATUS and data.get("status") in JobStatus.FINISHED:
                self._forget_old(session)
        return str(event_id)

    def _forget_old(self, session: Session) -> None:
        """Drop events and previews older than the TTL: a table has no expiry of its own."""
        cutoff = utcnow() - timedelta(seconds=self.ttl_s)
        session.execute(delete(JobEvent).where(JobEvent.created_at < cutoff))
        session.execute(delete(JobPreview).where(JobPreview.updated_at < cutoff))

    def publish_checking(self, job_id: uuid.UUID, events: Sequence[NewEvent]) -> bool:
        self.publish_many(events)
        return self.canceled(job_id)

    def signal_cancel(self, job_ids: Iterable[uuid.UUID]) -> None:
        """Nothing to do: the job's own row says it was canceled (see `canceled`)."""

    def canceled(self, job_id: uuid.UUID) -> bool:
        with self._session() as session:
            return session.scalar(select(Job.status).where(Job.id == job_id)) != JobStatus.RUNNING

    def put_preview(self, job_id: uuid.UUID, step: int, image: bytes, content_type: str) -> None:
        with self._session() as session, session.begin():
            session.merge(
                JobPreview(
                    job_id=job_id, step=step, data=image, content_type=content_type, updated_at=utcnow()
                )
            )

    def preview(self, job_id: uuid.UUID) -> tuple[int, bytes, str] | None:
        with self._session() as session:
            found = session.get(JobPreview, job_id)
            return (found.step, found.data, found.content_type) if found else None

    def _events_after(self, stream: str, after: str) -> list[Event]:
        with self._session() as session:
            rows = session.scalars(
                select(JobEvent)
                .where(JobEvent.stream == stream, JobEvent.id > int(after))
                .order_by(JobEvent.id)
                .limit(10_000)
            )
            return [Event(str(row.id), row.kind, row.data) for row in rows]

    async def read(self, stream: str, after: str, wait_s: float) -> list[Event]:
        deadline = time.monotonic() + wait_s
        while True:
            events = await asyncio.to_thread(self._events_after, stream, after)
            if events or time.monotonic() >= deadline:
                return events
            await asyncio.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))

    def check_id(self, event_id: str) -> str:
        if not DATABASE_ID.fullmatch(event_id) or int(event_id) >= 2**63:  # a signed 64-bit row id
            raise BadEventId(f"Last-Event-ID {event_id!r} is not an id this stream sent (a whole number)")
        return event_id


def events_url(settings: Settings) -> str:
    """Where the streams live: `DIFFQ_EVENTS_URL`, else the broker when it is Redis, else the database."""
    if settings.events_url:
        return settings.events_url
    if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
        return settings.broker_url
    return "database"


@lru_cache
def get_event_store() -> EventStore:
    settings = get_settings()
    url = events_url(settings)
    if url == "database":
        return DatabaseEventStore(settings)
    return RedisEventStore(url, settings)


class JobEvents:
    """What a worker publishes about the one job it runs, to the job's stream and its batch's.

    Publishing is best effort: a store that fails (Redis restarting) is logged and the job runs on, its
    state in Postgres as always; a cancel then reaches it through its next progress write.
    """

    def __init__(
        self,
        store: EventStore,
        job_id: uuid.UUID,
        batch_id: uuid.UUID | None = None,
        batch_index: int | None = None,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.batch_id = batch_id
        self.batch_index = batch_index
        self.stream = job_stream(job_id)
        self.failed = False
        self.batch_published = float("-inf")
        # The cancel flag as `started` read it, for the runner's check before its first step.
        self.read_with_start: bool | None = None

    @classmethod
    def for_job(cls, job: Job) -> "JobEvents":
        return cls(get_event_store(), job.id, job.batch_id, job.batch_index)

    def _quietly(self, what: str, call: Callable[[], T], otherwise: T) -> T:
        try:
            return call()
        except Exception as error:  # the store is a view; the job must not fail for it
            if not self.failed:
                logger.warning("could not %s for job %s (%s); going on without", what, self.job_id, error)
            self.failed = True
            return otherwise

    def status(self, status: str, **data: Any) -> None:
        """A status change, to the job's stream and to its batch's."""
        self._quietly("publish its status", lambda: self.store.publish_many(self._status(status, data)), None)

    def started(self, **data: Any) -> None:
        """The `running` status (`status`), and the cancel flag read in the same round trip, which answers
        the runner's check before its first step (`canceled(at_start=True)`)."""
        events = self._status(JobStatus.RUNNING, data)
        self.read_with_start = self._quietly(
            "publish its status", lambda: self.store.publish_checking(self.job_id, events), None
        )

    def _status(self, status: str, data: dict[str, Any]) -> list[NewEvent]:
        events = [(self.stream, STATUS, {"status": status, **data})]
        if self.batch_id is not None:
            job = {"job_id": str(self.job_id), "batch_index": self.batch_index, "status": status, **data}
            events.append((batch_stream(self.batch_id), JOB, job))
        return events

    def step(self, progress: dict[str, Any]) -> bool:
        """Publish a finished step; True if the job was canceled since (read in the same round trip).

        A batch's stream gets its jobs' progress too, but at most every `BATCH_PROGRESS_INTERVAL_S` per
        job (and the last step): enough for a line per running job, not a flood for a big batch."""
        also: list[NewEvent] = []
        now = time.monotonic()
        last = progress.get("step") == progress.get("total")
        if self.batch_id is not None and (last or now - self.batch_published >= BATCH_PROGRESS_INTERVAL_S):
            self.batch_published = now
            job = {"job_id": str(self.job_id), "batch_index": self.batch_index, **progress}
            also.append((batch_stream(self.batch_id), PROGRESS, job))
        return self._quietly(
            "publish a step", lambda: self.store.publish_step(self.job_id, progress, also), False
        )

    def canceled(self, at_start: bool = False) -> bool:
        """Whether the job was canceled. `at_start`: the runner's check before its first step, answered
        by the read `started` made, if it made one."""
        read, self.read_with_start = self.read_with_start, None
        if at_start and read is not None:
            return read
        return self._quietly("read the cancel flag", lambda: self.store.canceled(self.job_id), False)

    def preview(self, step: int, image: bytes, content_type: str) -> None:
        def publish() -> None:
            self.store.put_preview(self.job_id, step, image, content_type)
            self.store.publish(self.stream, PREVIEW, {"step": step, "content_type": content_type})

        self._quietly("publish a preview", publish, None)

    def preview_unavailable(self, step: int, reason: str) -> None:
        data = {"step": step, "unavailable": reason}
        self._quietly("publish a preview", lambda: self.store.publish(self.stream, PREVIEW, data), None)

    def outputs(self, outputs: list[dict[str, Any]]) -> None:
        """The outputs listed on the job so far (a training job's sample grids, as they are stored)."""
        data = {"outputs": outputs}
        self._quietly("publish outputs", lambda: self.store.publish(self.stream, OUTPUTS, data), None)

    def finished(self, job: "Job | Ended") -> None:
        """The job's final status as Postgres has it, with its outputs, error and last progress."""
        if job.status not in JobStatus.FINISHED:
            return
        self.status(job.status, **final_state(job))


def final_state(job: "Job | Ended") -> dict[str, Any]:
    """What a final `status` event carries besides the status (output URLs are added by the API)."""
    return {"outputs": list(job.outputs or []), "error": job.error, "progress": job.progress}


def publish_canceled(session: Session, job_ids: list[uuid.UUID]) -> None:
    """After a cancel commits: stop the running ones (`signal_cancel`) and end their streams.

    `job_ids` are jobs that were running when they were canceled; a queued job never ran, has no
    stream to end, and a reader finds it canceled in Postgres.
    """
    if not job_ids:
        return
    rows = session.execute(select(Job.id, Job.batch_id, Job.batch_index).where(Job.id.in_(job_ids)))
    events: list[tuple[str, str, dict[str, Any]]] = []
    for row in rows:
        events.append((job_stream(row.id), STATUS, {"status": JobStatus.CANCELED}))
        if row.batch_id is not None:
            job = {"job_id": str(row.id), "batch_index": row.batch_index, "status": JobStatus.CANCELED}
            events.append((batch_stream(row.batch_id), JOB, job))
    try:
        store = get_event_store()
        store.signal_cancel(job_ids)
        store.publish_many(events)
    except Exception:
        # The cancel is committed; the worker still learns of it at its next progress write.
        logger.exception("could not signal the cancel of jobs %s", ", ".join(map(str, job_ids)))


def publish_batch_canceled(
    session: Session, batch_id: uuid.UUID, running: list[uuid.UUID], count: int
) -> None:
    """After a batch's cancel commits: its `running` jobs as in `publish_canceled`, and a `batch` event
    that tells the batch's readers to count again."""
    publish_canceled(session, running)
    try:
        get_event_store().publish(batch_stream(batch_id), BATCH, {"canceled": count})
    except Exception:
        logger.exception("could not publish the cancel of batch %s", batch_id)
