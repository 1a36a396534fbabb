"""Queued jobs whose message never reached the broker, or that the broker lost, are sent again."""

import uuid
from datetime import timedelta

import pytest
import redis
from sqlalchemy import delete, update

from core.config import get_settings
from core.db import db_session
from core.queue import enqueue_job, get_celery, make_celery
from core.reconcile import BrokerWatch, reconcile_once
from core.tables import Job, utcnow
from tests.utils.db import in_session


@pytest.fixture
def queue(broker, monkeypatch) -> str:
    """A queue of this test's own, which no worker consumes, so its messages can be read."""
    name = f"diffq-test-reconcile-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(get_settings(), "queue", name)
    yield name
    redis.Redis.from_url(broker).delete(name)


@pytest.fixture
def watch(broker) -> BrokerWatch:
    """A watch on a marker queue of its own, already holding its first marker."""
    watch = BrokerWatch(queue=f"diffq-test-marker-{uuid.uuid4().hex[:8]}")
    assert watch.broker_forgot(get_celery())  # a new broker holds no marker yet
    yield watch
    redis.Redis.from_url(broker).delete(watch.queue)


@pytest.fixture
def new_job(database):
    """Makes queued jobs, as the API commits them before sending; deletes them afterwards."""
    made: list[uuid.UUID] = []

    def make(queued_for_s: float = 0) -> uuid.UUID:
        since = utcnow() - timedelta(seconds=queued_for_s)
        with db_session() as session:
            job = Job(type="text2img", model="tiny-sd", params={"prompt": "x"}, updated_at=since)
            session.add(job)
        made.append(job.id)
        return job.id

    yield make
    with db_session() as session:
        session.execute(delete(Job).where(Job.id.in_(made)))


def messages_for(broker: str, queue: str, job_id: uuid.UUID) -> int:
    """How many messages in `queue` carry `job_id` (Celery puts the arguments in the headers)."""
    return sum(str(job_id) in raw.decode() for raw in redis.Redis.from_url(broker).lrange(queue, 0, -1))


def enqueued_at(job_id: uuid.UUID):
    with db_session() as session:
        return session.get_one(Job, job_id).enqueued_at


def test_enqueue_records_that_the_broker_took_the_job(broker, queue, new_job) -> None:
    job_id = new_job()
    assert enqueued_at(job_id) is None
    in_session(enqueue_job, job_id)
    assert enqueued_at(job_id) is not None
    assert messages_for(broker, queue, job_id) == 1


def test_a_job_that_never_reached_the_broker_is_sent_once(broker, queue, watch, new_job) -> None:
    unsent = new_job(queued_for_s=get_settings().resend_after_s + 60)
    just_committed = new_job()  # its sender may be about to send it
    in_session(reconcile_once, watch)
    assert messages_for(broker, queue, unsent) == 1
    assert enqueued_at(unsent) is not None
    assert messages_for(broker, queue, just_committed) == 0
    in_session(reconcile_once, watch)
    assert messages_for(broker, queue, unsent) == 1  # not again: the broker has it


def test_every_queued_job_is_sent_again_when_the_broker_forgot(broker, queue, watch, new_job) -> None:
    job_ids = [new_job(), new_job()]
    for job_id in job_ids:
        in_session(enqueue_job, job_id)
    in_session(reconcile_once, watch)
    assert [messages_for(broker, queue, job_id) for job_id in job_ids] == [1, 1]  # nothing lost

    # What a FLUSHDB or a restart without persistence does to this test's keys.
    redis.Redis.from_url(broker).delete(queue, watch.queue)
    with db_session() as session:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(updated_at=utcnow()))
    in_session(reconcile_once, watch)
    assert [messages_for(broker, queue, job_id) for job_id in job_ids] == [1, 1]
    assert all(enqueued_at(job_id) is not None for job_id in job_ids)
    in_session(reconcile_once, watch)
    assert [messages_for(broker, queue, job_id) for job_id in job_ids] == [1, 1]


def test_resend_queued_sends_every_queued_job_again(broker, queue, watch, new_job) -> None:
    job_id = new_job()
    in_session(enqueue_job, job_id)
    in_session(reconcile_once, watch, resend_queued=True)
    assert messages_for(broker, queue, job_id) == 2  # the second one is skipped by its claim


def test_an_older_marker_means_the_broker_went_back_in_time(watch) -> None:
    app = get_celery()
    assert not watch.broker_forgot(app)
    old = watch.last_put
    assert not watch.broker_forgot(app)
    # Redis restarted from a snapshot taken before the last marker was put in.
    with app.connection_for_write() as connection, connection.SimpleQueue(watch.queue) as marker:
        marker.clear()
        marker.put(old)
    assert watch.broker_forgot(app)
    assert not watch.broker_forgot(app)
    # A watch that put nothing in yet (a restarted beat) trusts any marker it finds.
    assert not BrokerWatch(queue=watch.queue).broker_forgot(app)


def test_broker_watch_on_the_filesystem_broker(tmp_path) -> None:
    settings = get_settings().model_copy(update={"home": tmp_path, "broker_url": "filesystem://"})
    app = make_celery(settings)
    watch = BrokerWatch()
    assert watch.broker_forgot(app)
    assert not watch.broker_forgot(app)
    for message in (tmp_path / "broker" / "queue").iterdir():
        message.unlink()  # the broker's folder emptied
    assert watch.broker_forgot(app)


def test_jobs_left_in_a_gone_workers_direct_queue_go_to_the_shared_queue(queue, new_job, broker) -> None:
    from core.queue import RUN_JOB_TASK
    from core.reconcile import rescue_direct_queues
    from core.routing import direct_queue
    from core.tables import WorkerNode

    name = f"gone-{uuid.uuid4().hex[:6]}@host"
    direct = direct_queue(queue, name)
    with db_session() as session:
        session.add(
            WorkerNode(
                name=name, device="cpu", queues=[direct, queue], pid=1,
                last_seen=utcnow() - timedelta(seconds=get_settings().worker_stale_s + 5),
            )
        )  # fmt: skip
    job_id = new_job()
    get_celery().send_task(RUN_JOB_TASK, args=[str(job_id)], queue=direct)
    client = redis.Redis.from_url(broker)
    assert client.llen(direct) == 1
    try:
        assert in_session(rescue_direct_queues, get_celery()) == 1
        assert client.llen(direct) == 0
        assert client.llen(queue) == 1
        assert in_session(rescue_direct_queues, get_celery()) == 0  # nothing left to move
    finally:
        with db_session() as session:
            session.execute(delete(WorkerNode).where(WorkerNode.name == name))


def test_a_first_start_is_not_a_loss(broker, queue, new_job, caplog) -> None:
    watch = BrokerWatch(queue=f"diffq-test-marker-{uuid.uuid4().hex[:8]}")
    try:
        with caplog.at_level("INFO", logger="core.reconcile"):
            in_session(reconcile_once, watch)  # no marker yet, nothing queued in the broker: nothing lost
        records = [r for r in caplog.records if r.name == "core.reconcile"]
        assert not [r for r in records if r.levelname == "WARNING"], [r.getMessage() for r in records]
        assert any("no broker marker yet" in r.getMessage() for r in records)

        caplog.clear()
        job_id = new_job()
        in_session(enqueue_job, job_id)
        redis.Redis.from_url(broker).delete(queue, watch.queue)  # now something is lost
        with caplog.at_level("INFO", logger="core.reconcile"):
            in_session(reconcile_once, watch)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any("queued jobs again" in message for message in warnings), warnings
        assert messages_for(broker, queue, job_id) == 1
    finally:
        redis.Redis.from_url(broker).delete(watch.queue)
