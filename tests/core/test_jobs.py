"""Job state changes on the real database: claims, leases, fencing, worker_lost, reconcile."""

from datetime import timedelta

import pytest
from sqlalchemy import delete, update

from core.db import db_session
from core.jobs import claim_job, finish_job, record_progress, renew_lease
from core.models import Job, utcnow
from core.reconcile import reconcile_once


@pytest.fixture
def job_id(database: str):  # type: ignore[no-untyped-def]
    with db_session() as session:
        job = Job(type="text2img", model="tiny-sd", params={"prompt": "x"})
        session.add(job)
    yield job.id
    # Gone afterwards: a job left running here would be requeued by later tests' reconciles.
    with db_session() as session:
        session.execute(delete(Job).where(Job.id == job.id))


def expire_lease(job_id) -> None:  # type: ignore[no-untyped-def]
    with db_session() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def load(job_id) -> Job:  # type: ignore[no-untyped-def]
    with db_session() as session:
        return session.get_one(Job, job_id)


def test_claim_once_while_the_lease_holds(job_id) -> None:  # type: ignore[no-untyped-def]
    first = claim_job(job_id, "a")
    assert first is not None and first.attempts == 1 and first.lease_expires_at > utcnow()
    assert claim_job(job_id, "b") is None
    assert renew_lease(job_id, 1)


def test_expired_lease_is_taken_over_and_the_old_attempt_is_fenced_off(job_id) -> None:  # type: ignore[no-untyped-def]
    claim_job(job_id, "a")
    expire_lease(job_id)
    second = claim_job(job_id, "b")
    assert second is not None and second.attempts == 2 and second.worker == "b"
    # The first worker comes back: none of its writes land.
    assert not record_progress(job_id, 1, {"step": 3})
    assert not renew_lease(job_id, 1)
    assert not finish_job(job_id, 1, "succeeded", outputs=[{"key": "x"}])
    assert finish_job(job_id, 2, "succeeded", outputs=[])
    assert load(job_id).outputs == []


def test_attempts_used_up_is_worker_lost(job_id, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from core.config import get_settings

    monkeypatch.setattr(get_settings(), "max_attempts", 2)
    for worker in ("a", "b"):
        assert claim_job(job_id, worker) is not None
        expire_lease(job_id)
    assert claim_job(job_id, "c") is None
    job = load(job_id)
    assert job.status == "failed" and job.error["code"] == "worker_lost"
    assert "2 times" in job.error["message"]


def test_reconcile_requeues_expired_jobs(job_id, broker, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import redis

    from core.config import get_settings

    # A queue no test worker consumes, so the message can be counted.
    monkeypatch.setattr(get_settings(), "queue", "diffq-test-reconcile")
    claim_job(job_id, "a")
    expire_lease(job_id)
    queue = redis.Redis.from_url(broker)
    before = queue.llen(get_settings().queue)
    assert reconcile_once()["requeued"] >= 1
    job = load(job_id)
    assert job.status == "queued" and job.lease_expires_at is None
    assert queue.llen(get_settings().queue) == before + 1
    assert reconcile_once()["requeued"] == 0  # nothing left to do
