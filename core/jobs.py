"""Job state changes. Each one is a single conditional UPDATE, so two processes racing on the
same job can never both win: a job is claimed once per attempt, finished once, canceled once.

A running job holds a lease that its worker renews (`renew_lease`). When the lease runs out the
worker is taken for dead: the job can be claimed again, up to `max_attempts` times. Every write a
worker makes names the attempt it runs (`attempt`), so a worker that was taken for dead but comes
back can no longer write to a job that another worker now runs.

Every function here takes the caller's session and never commits: the caller does, and a worker
commits each state change at once (a claim before it runs the job, each progress write, a renewal).
Each status change records its webhook event (core/webhooks.py) in the same transaction.
"""

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.orm import Session

from core.config import get_settings
from core.tables import Job, JobMetric, JobStatus, utcnow
from core.webhooks import record_job_event, record_job_events

WORKER_LOST = {
    "code": "worker_lost",
    "message": "the worker running this job stopped answering {attempts} times; "
    "check the workers' logs and memory, then submit the job again",
}


def lease_until() -> Any:
    return utcnow() + timedelta(seconds=get_settings().lease_s)


def _claimable(now: Any) -> Any:
    """Queued, or running under a lease that ran out."""
    return or_(
        Job.status == JobStatus.QUEUED,
        and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now),
    )


def _worker_lost(max_attempts: int, now: Any) -> dict[str, Any]:
    """The values that fail a job whose `max_attempts` attempts all lost their worker."""
    return {
        "status": JobStatus.FAILED,
        "error": {**WORKER_LOST, "message": WORKER_LOST["message"].format(attempts=max_attempts)},
        "lease_expires_at": None,
        "finished_at": now,
        "updated_at": now,
    }


def claim_job(session: Session, job_id: uuid.UUID, worker: str, device: str | None = None) -> Job | None:
    """Take a job for `worker` on `device` and start a new attempt; None if it is not this
    worker's to run.

    A job whose attempts are used up is failed with `worker_lost` instead of being run again. The
    caller commits, before it runs the job.
    """
    max_attempts = get_settings().max_attempts
    now = utcnow()
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, _claimable(now), Job.attempts < max_attempts)
        .values(
            status=JobStatus.RUNNING,
            worker=worker,
            device=device,
            attempts=Job.attempts + 1,
            lease_expires_at=lease_until(),
            started_at=now,
            updated_at=now,
            error=None,
        )
    ).rowcount
    if claimed == 1:
        record_job_event(session, job_id, "started")
        # Read fresh: the session may hold this job from an earlier delivery.
        return session.scalars(
            select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
        ).one()
    failed = session.execute(
        update(Job)
        .where(Job.id == job_id, _claimable(now), Job.attempts >= max_attempts)
        .values(**_worker_lost(max_attempts, now))
    ).rowcount
    if failed == 1:
        record_job_event(session, job_id, JobStatus.FAILED)
    return None


def _running(job_id: uuid.UUID, attempt: int) -> Any:
    return and_(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.attempts == attempt)


def renew_lease(session: Session, job_id: uuid.UUID, attempt: int) -> bool:
    """Extend the lease of a job this worker runs. False once the job is not its own any more.
    The caller commits."""
    return (
        session.execute(
            update(Job).where(_running(job_id, attempt)).values(lease_expires_at=lease_until())
        ).rowcount
        == 1
    )


def record_progress(
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    progress: dict[str, Any],
    *,
    metrics: list[dict[str, Any]] | None = None,
    outputs: list[dict[str, Any]] | None = None,
) -> bool:
    """Write a running job's progress. False when the job is no longer this attempt's to run
    (a user canceled it, or its lease ran out and another worker took it).

    A training job also appends the metrics of the steps since its last write (`step`, `epoch`,
    `loss`, `lr` each) and replaces its outputs so far, in the same transaction: an attempt that
    lost the job writes none of them. The caller commits (a worker at once, see `core.progress`).
    """
    values: dict[str, Any] = {"progress": progress, "lease_expires_at": lease_until(), "updated_at": utcnow()}
    if outputs is not None:
        values["outputs"] = outputs
    written = session.execute(update(Job).where(_running(job_id, attempt)).values(**values)).rowcount
    if written == 1 and metrics:
        session.execute(insert(JobMetric), [{"job_id": job_id, **metric} for metric in metrics])
    return written == 1


def lock_running_job(session: Session, job_id: uuid.UUID, attempt: int) -> bool:
    """Hold the job's row until the caller commits, if `attempt` still runs the job; False if not.

    What a worker writes elsewhere in the same transaction (a registered model, say) is then written
    only by the attempt that runs the job, and a cancel waits for it.
    """
    return (
        session.execute(update(Job).where(_running(job_id, attempt)).values(updated_at=utcnow())).rowcount
        == 1
    )


def forget_metrics_after(session: Session, job_id: uuid.UUID, attempt: int, step: int) -> bool:
    """Drop a job's metrics past `step`, where a resumed run starts again; False if not this attempt's.
    The caller commits."""
    if not lock_running_job(session, job_id, attempt):
        return False
    session.execute(delete(JobMetric).where(JobMetric.job_id == job_id, JobMetric.step > step))
    return True


def job_metrics(
    session: Session, job_id: uuid.UUID, after_step: int = 0, limit: int | None = None
) -> list[JobMetric]:
    """A training job's loss history, by step."""
    query = (
        select(JobMetric)
        .where(JobMetric.job_id == job_id, JobMetric.step > after_step)
        .order_by(JobMetric.step)
        .limit(limit)
    )
    return list(session.scalars(query))


def finish_job(
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    status: str,
    *,
    outputs: list[dict[str, Any]] | None = None,
    error: dict[str, str] | None = None,
    progress: dict[str, Any] | None = None,
) -> bool:
    """Move a running job to a final status. False if this attempt no longer runs it. The caller commits."""
    if status not in JobStatus.FINISHED:
        raise ValueError(f"{status!r} is not a final status")
    values: dict[str, Any] = {
        "status": status,
        "lease_expires_at": None,
        "finished_at": utcnow(),
        "updated_at": utcnow(),
    }
    if outputs is not None:
        values["outputs"] = outputs
    if error is not None:
        values["error"] = error
    if progress is not None:
        values["progress"] = progress
    finished = session.execute(update(Job).where(_running(job_id, attempt)).values(**values)).rowcount == 1
    if finished:
        record_job_event(session, job_id, status)
    return finished


def requeue_or_fail(session: Session, job_id: uuid.UUID, *lost: Any) -> str | None:
    """Put a running job that lost its worker back in the queue, or fail it with `worker_lost`
    once its attempts are used up. `lost` says which running job lost its worker (its lease ran
    out; it ran on a given worker). Returns the job's new status, or None when nothing qualified.

    The job is left without `enqueued_at`: the caller commits and sends it, or else the reconciler does.
    """
    max_attempts = get_settings().max_attempts
    now = utcnow()
    running = (Job.id == job_id, Job.status == JobStatus.RUNNING, *lost)
    requeued = session.execute(
        update(Job)
        .where(*running, Job.attempts < max_attempts)
        .values(status=JobStatus.QUEUED, lease_expires_at=None, enqueued_at=None, updated_at=now)
    ).rowcount
    if requeued:
        return JobStatus.QUEUED
    failed = session.execute(
        update(Job).where(*running, Job.attempts >= max_attempts).values(**_worker_lost(max_attempts, now))
    ).rowcount
    if failed:
        record_job_event(session, job_id, JobStatus.FAILED)
    return JobStatus.FAILED if failed else None


def hand_back(session: Session, job_id: uuid.UUID, worker: str) -> str | None:
    """Requeue (or fail) a job whose worker process died: `worker` knows, no need to wait for the
    lease to run out. Only a job that `worker` runs is touched: a duplicate delivery that died
    while another worker runs the job leaves it alone. The caller commits."""
    return requeue_or_fail(session, job_id, Job.worker == worker)


def mark_enqueued(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Note that the broker accepted these jobs' messages (see `core.reconcile`). The caller commits."""
    now = utcnow()
    for start in range(0, len(job_ids), 500):
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids[start : start + 500]), Job.status == JobStatus.QUEUED)
            .values(enqueued_at=now)
        )


def expired_jobs(session: Session, limit: int = 1000) -> list[uuid.UUID]:
    """Running jobs whose lease ran out: their workers are gone."""
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < utcnow())
            .limit(limit)
        )
    )


def cancel_jobs(session: Session, *conditions: Any) -> int:
    """Cancel the queued and running jobs that match `conditions`; return how many were canceled.

    A queued job is then never claimed (the claim wants `queued`); a running one sees the change at its
    next status check and stops, and its worker's `finish_job` no-ops (it wants `running`). The caller
    commits.
    """
    now = utcnow()
    canceled = session.scalars(
        update(Job)
        .where(Job.status.in_(JobStatus.ACTIVE), *conditions)
        .values(status=JobStatus.CANCELED, finished_at=now, updated_at=now)
        .returning(Job.id)
    ).all()
    record_job_events(session, canceled, JobStatus.CANCELED)
    return len(canceled)


def cancel_job(session: Session, job_id: uuid.UUID) -> bool:
    """Cancel one job; False if it does not exist or has already finished. The caller commits."""
    return cancel_jobs(session, Job.id == job_id) == 1


def job_status(session: Session, job_id: uuid.UUID) -> str | None:
    """A job's status, read fresh: what a running job checks between steps to learn it was canceled."""
    return session.scalar(select(Job.status).where(Job.id == job_id))


def record_canceled_progress(session: Session, job_id: uuid.UUID, progress: dict[str, Any]) -> bool:
    """Record where a canceled job stopped (its last finished step). The caller commits."""
    written = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.CANCELED)
        .values(progress=progress, updated_at=utcnow())
    ).rowcount
    return written == 1
