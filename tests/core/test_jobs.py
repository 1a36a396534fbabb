"""Job state changes on the real database: claims, leases, fencing, worker_lost, reconcile."""

from datetime import timedelta

import pytest
from sqlalchemy import delete, update

from core.db import db_session
from core.jobs import finish_job, hand_back, record_progress, renew_lease
from core.reconcile import requeue_expired
from core.tables import Job, utcnow
from tests.utils.db import in_session
from tests.utils.jobs import UNSERVED_QUEUE, claim_job


def requeue(job_id) -> None:
    """What the reconciler does to a job whose lease ran out."""
    expire_lease(job_id)
    assert in_session(requeue_expired)["requeued"] >= 1


@pytest.fixture
def job_id(database: str):
    with db_session() as session:
        job = Job(type="text2img", model="tiny-sd", params={"prompt": "x"}, queue=UNSERVED_QUEUE)
        session.add(job)
    yield job.id
    # Leave no running or queued job behind for the tests that count them.
    with db_session() as session:
        session.execute(delete(Job).where(Job.id == job.id))


def expire_lease(job_id) -> None:
    with db_session() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def load(job_id) -> Job:
    with db_session() as session:
        return session.get_one(Job, job_id)


def test_claim_once_while_the_lease_holds(job_id) -> None:
    first = in_session(claim_job, job_id, "a")
    assert first is not None and first.attempts == 1 and first.lease_expires_at > utcnow()
    assert in_session(claim_job, job_id, "b") is None
    assert in_session(renew_lease, job_id, 1)


def test_expired_lease_is_taken_over_and_the_old_attempt_is_fenced_off(job_id, broker) -> None:
    in_session(claim_job, job_id, "a")
    assert in_session(claim_job, job_id, "b") is None  # running: not claimable, even once its lease ran out
    requeue(job_id)
    second = in_session(claim_job, job_id, "b")
    assert second is not None and second.attempts == 2 and second.worker == "b"
    # The first worker comes back: none of its writes land.
    assert not in_session(record_progress, job_id, 1, {"step": 3})
    assert not in_session(renew_lease, job_id, 1)
    assert not in_session(finish_job, job_id, 1, "succeeded", outputs=[{"key": "x"}])
    assert in_session(finish_job, job_id, 2, "succeeded", outputs=[])
    assert load(job_id).outputs == []


def test_attempts_used_up_is_worker_lost(job_id, broker, monkeypatch) -> None:
    from core.config import get_settings

    monkeypatch.setattr(get_settings(), "max_attempts", 2)
    assert in_session(claim_job, job_id, "a") is not None
    requeue(job_id)
    assert in_session(claim_job, job_id, "b") is not None
    expire_lease(job_id)
    assert in_session(requeue_expired)["worker_lost"] >= 1
    assert in_session(claim_job, job_id, "c") is None
    job = load(job_id)
    assert job.status == "failed" and job.error["code"] == "worker_lost"
    assert "2 times" in job.error["message"]


def test_a_dead_process_hands_back_only_its_own_job(job_id, monkeypatch) -> None:
    from core.config import get_settings

    monkeypatch.setattr(get_settings(), "max_attempts", 2)
    in_session(claim_job, job_id, "a")
    assert in_session(hand_back, "b") == []  # another worker's process died
    assert in_session(claim_job, job_id, "b") is None
    assert in_session(hand_back, "a") == [(job_id, "queued")]
    taken = in_session(claim_job, job_id, "b")
    assert taken is not None and taken.attempts == 2 and taken.worker == "b"
    assert not in_session(finish_job, job_id, 1, "succeeded", outputs=[])
    assert in_session(hand_back, "b") == [(job_id, "failed")]
    job = load(job_id)
    assert job.error["code"] == "worker_lost" and job.lease_expires_at is None


def test_reconcile_requeues_expired_jobs(job_id, broker, monkeypatch) -> None:
    import redis

    from core.config import get_settings

    # A queue no test worker consumes, so the message can be counted.
    monkeypatch.setattr(get_settings(), "queue", "diffq-test-reconcile")
    in_session(claim_job, job_id, "a")
    expire_lease(job_id)
    queue = redis.Redis.from_url(broker)
    before = queue.llen(get_settings().queue)
    with db_session() as session:  # the job's queue, as if it had been submitted under these settings
        session.execute(update(Job).where(Job.id == job_id).values(queue=get_settings().queue))
    assert in_session(requeue_expired)["requeued"] >= 1
    job = load(job_id)
    assert job.status == "queued" and job.lease_expires_at is None
    assert queue.llen(get_settings().queue) == before + 1  # a worker woken for it
    assert in_session(requeue_expired)["requeued"] == 0  # nothing left to do
