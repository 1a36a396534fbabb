"""Event streams in both stores: Redis Streams (the tests' Redis) and the database table (the tests'
Postgres here; the embedded defaults' SQLite runs the same statements)."""

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest

from core.config import get_settings
from core.events import (
    PROGRESS,
    STATUS,
    BadEventId,
    DatabaseEventStore,
    EventStore,
    JobEvents,
    RedisEventStore,
    job_stream,
)
from core.progress import JobCanceled, ProgressReporter
from core.tables import Job, JobStatus


@pytest.fixture(params=["redis", "database"])
def store(request: pytest.FixtureRequest, database: str, broker: str) -> Iterator[EventStore]:
    settings = get_settings()
    if request.param == "redis":
        yield RedisEventStore(broker, settings)
    else:
        yield DatabaseEventStore(settings)


def running_job() -> Job:
    from core.db import db_session
    from tests.conftest import TEST_OWNER

    with db_session() as session:
        job = Job(type="text2img", model="tiny-sd", params={}, status=JobStatus.RUNNING, owner=TEST_OWNER)
        session.add(job)
    return job


def read(store: EventStore, stream: str, after: str, wait_s: float = 0) -> list:
    return asyncio.run(store.read(stream, after, wait_s))


def test_a_stream_replays_in_order_from_the_start_and_after_any_id(store: EventStore) -> None:
    stream = job_stream(uuid.uuid4())
    ids = [store.publish(stream, PROGRESS, {"step": step}) for step in range(1, 6)]
    store.publish(stream, STATUS, {"status": "succeeded"})
    events = read(store, stream, store.start)
    assert [e.data.get("step") for e in events] == [1, 2, 3, 4, 5, None]
    assert [e.id for e in events[:5]] == ids
    assert events[-1].is_final() and not events[0].is_final()
    assert all(isinstance(e.data["ts"], float) for e in events)
    after_third = read(store, stream, ids[2])
    assert [e.data.get("step") for e in after_third] == [4, 5, None]
    assert read(store, stream, events[-1].id) == []


def test_a_waiting_reader_gets_an_event_published_meanwhile(store: EventStore) -> None:
    stream = job_stream(uuid.uuid4())

    async def scenario() -> list:
        reader = asyncio.create_task(store.read(stream, store.start, wait_s=5))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(store.publish, stream, PROGRESS, {"step": 1})
        return await reader

    started = time.monotonic()
    events = asyncio.run(scenario())
    assert [e.data["step"] for e in events] == [1]
    assert time.monotonic() - started < 4  # woken by the event, not by the 5 s wait


def test_a_reader_of_an_empty_stream_returns_after_its_wait(store: EventStore) -> None:
    assert read(store, job_stream(uuid.uuid4()), store.start, wait_s=0.2) == []


def test_the_cancel_flag_comes_back_with_a_step(store: EventStore) -> None:
    job = running_job()
    assert store.publish_step(job.id, {"step": 1}) is False
    assert store.canceled(job.id) is False
    from core.db import db_session
    from core.jobs import cancel_job

    with db_session() as session:
        cancel_job(session, job.id)
    store.signal_cancel([job.id])
    assert store.publish_step(job.id, {"step": 2}) is True
    assert store.canceled(job.id) is True


def test_a_preview_is_the_latest_one(store: EventStore) -> None:
    job_id = uuid.uuid4()
    assert store.preview(job_id) is None
    store.put_preview(job_id, 5, b"first", "image/jpeg")
    store.put_preview(job_id, 10, b"second", "image/webp")
    assert store.preview(job_id) == (10, b"second", "image/webp")


def test_ids_of_another_store_are_refused(store: EventStore) -> None:
    other = "42" if isinstance(store, RedisEventStore) else "1712345678901-0"
    with pytest.raises(BadEventId):
        store.check_id(other)
    assert store.check_id(store.start) == store.start


def test_a_redis_stream_is_trimmed_and_expires(broker: str) -> None:
    import redis

    store = RedisEventStore(broker, get_settings())
    stream = job_stream(uuid.uuid4())
    events = [(stream, PROGRESS, {"step": step}) for step in range(5000)]
    store.publish_many(events)
    client = redis.Redis.from_url(broker)
    key = RedisEventStore.key(stream)
    assert 2000 <= client.xlen(key) < 3000  # MAXLEN ~ trims whole nodes
    assert 0 < client.ttl(key) <= get_settings().events_ttl_s


def test_a_reporter_with_events_reads_no_status_and_stops_at_the_next_step(store: EventStore) -> None:
    """Every step is published; Postgres is written at most every min_interval_s and never read; a
    cancel stops the run at the step after it."""
    job = running_job()
    events = JobEvents(store, job.id)
    writes: list[dict] = []
    status_reads: list[uuid.UUID] = []
    reporter = ProgressReporter(
        job.id,
        attempt=1,
        total=100,
        min_interval_s=3600,
        write=lambda job_id, attempt, progress: writes.append(progress) or True,
        status=lambda job_id: status_reads.append(job_id) or JobStatus.RUNNING,
        check_interval_s=0,
        events=events,
    )
    reporter.flush()
    for step in range(1, 11):
        reporter.update(step)
    reporter.check()
    published = [e for e in read(store, job_stream(job.id), store.start) if e.kind == PROGRESS]
    assert [e.data["step"] for e in published] == list(range(1, 11))
    assert status_reads == [] and len(writes) == 1

    from core.db import db_session
    from core.jobs import cancel_job

    with db_session() as session:
        cancel_job(session, job.id)
    store.signal_cancel([job.id])
    with pytest.raises(JobCanceled):
        reporter.update(11)
    assert status_reads == []


def test_a_failing_store_does_not_fail_the_job(database: str) -> None:
    """Publishing is best effort: a store that is down is logged and the run goes on."""
    store = RedisEventStore("redis://127.0.0.1:1/0", get_settings())  # nothing listens there
    events = JobEvents(store, uuid.uuid4())
    events.status(JobStatus.RUNNING)
    assert events.step({"step": 1}) is False
    assert events.canceled() is False
    assert events.failed


@pytest.mark.parametrize(
    "event_id",
    ["9999999999999999999", "²", "١٢٣", "12-²", "1-99999999999999999999", "99999999999999999999-0", "", "1 "],
)
def test_last_event_ids_that_no_store_made_are_refused(event_id: str) -> None:
    # Each once reached the store: an OverflowError from SQLite, int() of "²", a stream id Redis refuses.
    from core.config import get_settings
    from core.events import BadEventId, DatabaseEventStore, RedisEventStore

    for store in (
        DatabaseEventStore(get_settings()),
        RedisEventStore("redis://127.0.0.1:6379/0", get_settings()),
    ):
        with pytest.raises(BadEventId):
            store.check_id(event_id)
    assert DatabaseEventStore(get_settings()).check_id("9223372036854775807") == "9223372036854775807"
    assert RedisEventStore("redis://127.0.0.1:6379/0", get_settings()).check_id("1712345678901-0")
