"""A job's and a batch's events as Server-Sent Events, and a running job's latest preview.

`GET /v1/jobs/{id}/events` replays the job's stream (core/events.py) from its first event, or from
after the one named by `Last-Event-ID` when a client reconnects, then follows it live and ends after
the final `status` event. A job whose stream expired (or that never ran, canceled while queued) gets
one final `status` event made from its row in the database. A stream may miss its final event (a
worker that died, the reconciler failing the job): after `DIFFQ_EVENTS_RECHECK_S` without an event,
the job's row is read, and a job that has ended gets its final event from there.

`GET /v1/batches/{id}/events` is the batch's stream: a `job` event per status change of one of its
jobs, its running jobs' `progress` (at most twice a second per job), and a `counts` event (no id;
from the database, at most every half second after jobs end and on every recheck) with the batch's
counts by status, its progress and `done`. It ends after the `counts` event that says `done`.

Each event's `data` is JSON with `ts`, when it was published (seconds since the epoch). Outputs come
with their URLs, previews with the URL of `GET /v1/jobs/{id}/preview`. The events read together go
out as one chunk.

How a connection reads (the design, for many clients on one process). A connection follows its
stream through `EventStore.subscribe`. With Redis, no connection reads Redis on its own: the event
loop's one shared reader (core/event_fanout.py) runs a single blocking XREAD over every stream that
has a subscriber, re-issued when that set changes, decodes each entry once and appends it to the
queue of each subscription of its stream; a new subscription first replays, with XRANGE, what its
stream had up to the reader's position, so that replay and live part meet without a gap or a
duplicate. An event that every connection sends unchanged (no URL added) is encoded to SSE bytes
once. The embedded defaults' table-backed store polls its table, per connection, every 0.1 s.

Database use. The key and the owner are checked on a session that is closed before the stream starts:
an open stream holds no database connection. Rechecks and batch counts run on `RECHECK_THREADS`
threads of their own, so that however many streams recheck at once (clients that connected together
recheck together), they hold at most that many of the pool's connections, and the rest wait.
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, HTTPException, Request, Response, Security, status
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from api.auth import READ, bearer, current_principal, require
from api.deps import JobDep, get_batch_or_404, get_job_or_404
from api.schemas import JobOutput
from core.auth import Principal, Scope
from core.batches import BatchState, batch_state
from core.config import get_settings
from core.db import get_sessionmaker
from core.events import (
    BATCH,
    JOB,
    PREVIEW,
    STATUS,
    BadEventId,
    Event,
    EventStore,
    batch_stream,
    final_state,
    get_event_store,
    job_stream,
)
from core.storage import get_storage
from core.tables import Batch, Job, JobStatus

router = APIRouter(tags=["events"])

PING_S = 15
COUNTS_MIN_INTERVAL_S = 0.5
# Rechecks and batch counts read the database on these threads only: however many streams recheck at
# once, they take at most this many of the pool's connections (the rest wait their turn).
RECHECK_THREADS = 4
_RECHECKS = ThreadPoolExecutor(RECHECK_THREADS, thread_name_prefix="diffq-sse-recheck")
T = TypeVar("T")
LastEventId = Annotated[
    str | None,
    Header(description="The id of the last event received: the stream resumes after it."),
]
SSE_RESPONSE = {200: {"content": {"text/event-stream": {}}, "description": "A stream of Server-Sent Events."}}


def _start(store: EventStore, last_event_id: str | None) -> str:
    if not last_event_id:
        return store.start
    try:
        return store.check_id(last_event_id)
    except BadEventId as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=f"{error}; reconnect without it") from None


class Urls:
    """Adds URLs to what events name: outputs' storage keys, previews."""

    def __init__(self, request: Request) -> None:
        self.base_url = str(request.base_url)
        self.storage = get_storage()

    def outputs(self, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        context = {"storage": self.storage, "base_url": self.base_url}
        return [
            JobOutput.model_validate(output, context=context).model_dump(mode="json", exclude_none=True)
            for output in outputs
        ]

    def job_event(self, job_id: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("outputs"):
            data = {**data, "outputs": self.outputs(data["outputs"])}
        if kind == PREVIEW and "unavailable" not in data:
            data = {
                **data,
                "url": f"{self.base_url.rstrip('/')}/v1/jobs/{job_id}/preview?step={data['step']}",
            }
        return data


def sse(event_id: str | None, kind: str, data: dict[str, Any]) -> bytes:
    return ServerSentEvent(data=json.dumps(data), event=kind, id=event_id).encode()


def encoded(event: Event, data: dict[str, Any]) -> bytes:
    """`event` as SSE bytes with `data`: made once for every connection when `data` is the event's own
    (no URLs added), since one event is fanned out to all its stream's subscribers."""
    if data is not event.data:
        return sse(event.id, event.kind, data)
    found = event.memo.get("sse")
    if found is None:
        # The JSON the store read, when it kept it (Redis), is what json.dumps would make of `data`.
        text = event.memo.get("json") or json.dumps(data)
        found = event.memo["sse"] = ServerSentEvent(data=text, event=event.kind, id=event.id).encode()
    return found


def _fresh(model: type[Job] | type[Batch], row_id: Any) -> Any:
    with get_sessionmaker()() as session:
        return session.get(model, row_id)


def _batch_counts(batch: Batch) -> tuple[BatchState, dict[str, Any]]:
    with get_sessionmaker()() as session:
        state = batch_state(session, batch, running_limit=0)
    counts = {
        "status": state.status,
        "done": state.done,
        "counts": state.counts,
        "progress": {"finished": state.finished, "total": state.total, "fraction": state.fraction},
        "ts": round(time.time(), 4),
    }
    return state, counts


async def _in_db(call: Callable[..., T], *args: Any) -> T:
    """`call(*args)` on one of the `RECHECK_THREADS` threads (see the module docstring)."""
    return await asyncio.get_running_loop().run_in_executor(_RECHECKS, call, *args)


async def follow_job(
    store: EventStore, job: Job, after: str, urls: Urls, recheck_s: float
) -> AsyncIterator[bytes]:
    """The job's events after `after`, live, until its final status (see the module docstring); the
    events read together go out as one chunk."""
    stream, job_id = job_stream(job.id), str(job.id)
    ended: Job | None = job if job.status in JobStatus.FINISHED else None
    with store.subscribe(stream, after) as subscription:
        while True:
            events = await subscription.next(0 if ended else recheck_s)
            chunk = []
            for event in events:
                chunk.append(encoded(event, urls.job_event(job_id, event.kind, event.data)))
                if event.is_final():
                    yield b"".join(chunk)
                    return
            if ended is not None:
                # Replayed all the stream still has, and it ends without a final event: the database's.
                data = {"status": ended.status, **final_state(ended), "ts": round(time.time(), 4)}
                chunk.append(sse(subscription.after, STATUS, urls.job_event(job_id, STATUS, data)))
                yield b"".join(chunk)
                return
            if chunk:
                yield b"".join(chunk)
            else:
                current = await _in_db(_fresh, Job, job.id)
                if current is None or current.status in JobStatus.FINISHED:
                    ended = current or job
                    if current is None:  # deleted meanwhile: say how it was last seen
                        ended.status = JobStatus.CANCELED


async def follow_batch(
    store: EventStore, batch: Batch, after: str, urls: Urls, recheck_s: float
) -> AsyncIterator[bytes]:
    """The batch's events after `after`, live, with `counts` events, until it is done; the events read
    together go out as one chunk."""
    counted_at = 0.0
    state, counts = await _in_db(_batch_counts, batch)
    with store.subscribe(batch_stream(batch.id), after) as subscription:
        while True:
            events = await subscription.next(0 if state.done else recheck_s)
            ended_jobs = False
            chunk = []
            for event in events:
                data = event.data
                if data.get("outputs"):
                    data = {**data, "outputs": urls.outputs(data["outputs"])}
                chunk.append(encoded(event, data))
                job_ended = event.kind == JOB and data["status"] in JobStatus.FINISHED
                ended_jobs |= event.kind == BATCH or job_ended
            if state.done:
                yield b"".join([*chunk, sse(None, "counts", counts)])
                return
            if chunk:
                yield b"".join(chunk)
            if not events or (ended_jobs and time.monotonic() - counted_at >= COUNTS_MIN_INTERVAL_S):
                counted_at = time.monotonic()
                state, counts = await _in_db(_batch_counts, batch)
                if not state.done:
                    yield sse(None, "counts", counts)
                # A done batch loops once more, without waiting, to send what its stream has left.


def _authorized(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None,
    find: Callable[[Any, Session, Principal], Any],
    row_id: uuid.UUID,
) -> Any:
    """The job or batch `row_id` if the request's key may read it (401/403/404 as every route answers),
    on a session of its own, closed before returning."""
    with get_sessionmaker()() as session:
        principal = require(Scope.READ)(current_principal(request, session, credentials))
        return find(row_id, session, principal)


async def event_response(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None,
    find: Callable[[Any, Session, Principal], Any],
    row_id: uuid.UUID,
    last_event_id: str | None,
    follow: Callable[..., AsyncIterator[bytes]],
) -> EventSourceResponse:
    # One thread call opens, uses and closes the session: with the usual per-request session a burst of
    # clients connecting at once can take every pool connection while their routes wait for a thread.
    row = await run_in_threadpool(_authorized, request, credentials, find, row_id)
    store = get_event_store()
    after = _start(store, last_event_id)
    return EventSourceResponse(
        follow(store, row, after, Urls(request), get_settings().events_recheck_s),
        ping=PING_S,
        # No proxy buffering (nginx), so that each event reaches the client at once.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={**SSE_RESPONSE, 400: {"description": "Last-Event-ID is not an id of this stream."}},
)
async def job_events(
    job_id: uuid.UUID, request: Request, credentials: Credentials, last_event_id: LastEventId = None
) -> EventSourceResponse:
    """The job's events as Server-Sent Events: `status` (queued → running → a final status, with its
    outputs or error), `progress` (each step: step, total, fraction, eta_s, steps_per_s; training: epoch,
    loss, lr), `preview` (step, url), `outputs` (a training job's outputs so far). Send `Last-Event-ID`
    to resume after an event; the stream ends after the final status."""
    return await event_response(request, credentials, get_job_or_404, job_id, last_event_id, follow_job)


@router.get(
    "/v1/batches/{batch_id}/events",
    response_class=EventSourceResponse,
    responses={**SSE_RESPONSE, 400: {"description": "Last-Event-ID is not an id of this stream."}},
)
async def batch_events(
    batch_id: uuid.UUID, request: Request, credentials: Credentials, last_event_id: LastEventId = None
) -> EventSourceResponse:
    """The batch's events as Server-Sent Events: `job` (a job's status change: job_id, batch_index,
    status, and its outputs or error when it ends), `progress` (its running jobs' steps) and `counts`
    (status, done, counts by status, progress). Send `Last-Event-ID` to resume after an event; the
    stream ends once the batch is done."""
    return await event_response(request, credentials, get_batch_or_404, batch_id, last_event_id, follow_batch)


@router.get(
    "/v1/jobs/{job_id}/preview",
    dependencies=READ,
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/webp": {}}}, 404: {"description": "No preview."}},
)
def job_preview(job: JobDep) -> Response:
    """The job's latest preview image (see `preview_every`), kept while its event stream is; the
    `X-Preview-Step` header says which step it shows."""
    found = get_event_store().preview(job.id)
    if found is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail=f"job {job.id} has no preview; submit it with params.preview_every (previews are kept "
            f"for DIFFQ_EVENTS_TTL_S after the job's last event)",
        )
    step, image, content_type = found
    headers = {"X-Preview-Step": str(step), "Cache-Control": "no-store"}
    return Response(image, media_type=content_type, headers=headers)
