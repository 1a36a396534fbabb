"""Job state changes. Each one is a single conditional UPDATE, so two processes racing on the
same job can never both win: a job is claimed once per attempt, finished once, canceled once.

A running job holds a lease that its worker renews (`renew_lease`). When the lease runs out the
worker is taken for dead: the reconciler puts the job back in the queue (`requeue_or_fail`), up to
`max_attempts` attempts in all; which queued job a worker claims is core/scheduling.py's to decide.
Every write a worker makes names the attempt it runs (`attempt`), so a worker that was taken for dead
but comes back can no longer write to a job that another worker now runs.

Every function here takes the caller's session and never commits: the caller does, and a worker
commits each state change at once (a claim before it runs the job, each progress write, a renewal).
Each status change records its webhook event (core/webhooks.py) in the same transaction.
"""

import uuid
from datetime import timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import Integer, and_, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from core.config import get_settings
from core.scheduling import Claimer, claim_params, next_job_cte, serialize_claims
from core.tables import Job, JobMetric, JobStatus, utcnow
from core.webhooks import JobHooks, record_job_event, record_job_events

WORKER_LOST = {
    "code": "worker_lost",
    "message": "the worker running this job stopped answering {attempts} times; "
    "check the workers' logs and memory, then submit the job again",
}


def lease_until() -> Any:
    return utcnow() + timedelta(seconds=get_settings().lease_s)


def _worker_lost(max_attempts: int, now: Any) -> dict[str, Any]:
    """The values that fail a job whose `max_attempts` attempts all lost their worker."""
    return {
        "status": JobStatus.FAILED,
        "error": {**WORKER_LOST, "message": WORKER_LOST["message"].format(attempts=max_attempts)},
        "lease_expires_at": None,
        "finished_at": now,
        "updated_at": now,
    }


# The claim's bind parameters that change with each claim, beside `claim_params`'s.
CLAIMED_AT, LEASE_UNTIL = "b_claimed_at", "b_lease_until"
FUSE_KEY, OWNER, LIMIT = "b_fuse_key", "b_owner", "b_limit"


@lru_cache(maxsize=64)
def _start_statement(chosen: Any, claimer: Claimer, loaded_only: bool = False) -> Any:
    """Start an attempt of each queued job whose id `chosen` (a locked, materialized CTE, built once per
    claimer) names, returning the jobs; run with `_times`. With `loaded_only`, only if its model is one
    `claimer` has loaded. Built once per CTE: building it cost a worker about a millisecond a claim."""
    conditions = [Job.id.in_(select(chosen.c.id)), Job.status == JobStatus.QUEUED]
    if loaded_only:
        conditions.append(Job.model.in_(claimer.models))
    return (
        update(Job)
        .where(*conditions)
        .values(
            status=JobStatus.RUNNING,
            worker=claimer.worker,
            device=claimer.device,
            attempts=Job.attempts + 1,
            lease_expires_at=bindparam(LEASE_UNTIL, type_=Job.lease_expires_at.type),
            started_at=bindparam(CLAIMED_AT, type_=Job.started_at.type),
            updated_at=bindparam(CLAIMED_AT, type_=Job.updated_at.type),
            error=None,
        )
        .returning(Job)
        .execution_options(synchronize_session=False, populate_existing=True)
    )


def _times() -> dict[str, Any]:
    return {CLAIMED_AT: utcnow(), LEASE_UNTIL: lease_until()}


def _started(session: Session, claimed: list[Job]) -> list[Job]:
    """Record the `started` webhook events of the jobs just claimed; the jobs in claim order."""
    # Only the jobs whose webhook asks for it cost a write (core/webhooks.py).
    if hooked := [job.id for job in claimed if job.webhook and "started" in job.webhook.get("events", ())]:
        record_job_events(session, hooked, "started")
    return sorted(claimed, key=_age_order)


def _age_order(job: Job) -> tuple[Any, ...]:
    """Priority, then age: `created_at`, a batch's `batch_index` (NULLs last), the id; the order the
    claim and `claim_partners` break ties in."""
    return (-job.priority, job.created_at, job.batch_index is None, job.batch_index or 0, job.id)


def claim(session: Session, claimer: Claimer, limit: int = 1, loaded_only: bool = False) -> list[Job]:
    """Take the best queued job for `claimer` (core/scheduling.py decides which), start its attempt
    and give the worker its lease; [] when there is none. One conditional UPDATE over the locked
    candidates, so two workers never take the same job. The caller commits, before it runs the job.

    `loaded_only`: take the best job only if its model is one `claimer` has loaded ([] otherwise, the
    job left queued): a task going on after a call (workers/tasks.py) leaves a job that needs a load to
    the wake-ups, which send it to an idle worker that has its model, if one has."""
    if loaded_only and not claimer.models:
        return []
    settings = get_settings()
    serialize_claims(session, settings)
    dialect = session.get_bind().dialect.name
    chosen = next_job_cte(claimer, settings, dialect, limit)
    statement = _start_statement(chosen, claimer, loaded_only)
    params = claim_params(settings, utcnow()) | _times()
    return _started(session, session.scalars(statement, params).all())


@lru_cache(maxsize=64)
def _partners_statement(claimer: Claimer, one_owner: bool) -> Any:
    """What `claim_partners` runs, built once per claimer."""
    conditions = [
        Job.status == JobStatus.QUEUED,
        Job.fuse_key == bindparam(FUSE_KEY, type_=Job.fuse_key.type),
        Job.queue.in_(claimer.queues),
    ]
    if one_owner:
        conditions.append(Job.owner == bindparam(OWNER, type_=Job.owner.type))
    chosen = (
        select(Job.id)
        .where(*conditions)
        .order_by(Job.priority.desc(), Job.created_at, Job.batch_index.asc().nulls_last(), Job.id)
        .limit(bindparam(LIMIT, type_=Integer))
        .with_for_update(skip_locked=True)
        .cte("partners")
        .prefix_with("MATERIALIZED")
    )
    return _start_statement(chosen, claimer)


def claim_partners(session: Session, lead: Job, claimer: Claimer, limit: int) -> list[Job]:
    """Take up to `limit` queued jobs that can run in one pipeline call with `lead`, just claimed in this
    transaction (the same `fuse_key`, core/fusion.py), from `claimer`'s queues, by priority then age
    (a batch's jobs, written with one `created_at`, in their batch order: the claim's own tie-breaks).

    With a per-owner running limit, only `lead`'s owner's jobs, as many as its limit leaves room for
    (counted under the claim lock that `claim` took). The caller commits."""
    if lead.fuse_key is None or limit < 1 or claimer.only is not None:
        return []
    settings = get_settings()
    params: dict[str, Any] = {FUSE_KEY: lead.fuse_key, OWNER: lead.owner}
    if settings.max_running_jobs:
        running = session.scalar(
            select(func.count()).where(Job.owner == lead.owner, Job.status == JobStatus.RUNNING)
        )
        limit = min(limit, settings.max_running_jobs - (running or 0))
        if limit < 1:
            return []
    statement = _partners_statement(claimer, bool(settings.max_running_jobs))
    return _started(session, session.scalars(statement, params | {LIMIT: limit} | _times()).all())


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
) -> "Ended | None":
    """Move a running job to a final status: the state written, or None if this attempt no longer runs it.
    The caller commits."""
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
    row = session.execute(
        update(Job)
        .where(_running(job_id, attempt))
        .values(**values)
        .returning(Job.status, Job.outputs, Job.error, Job.progress, Job.webhook, Job.batch_id)
    ).first()
    if row is None:
        return None
    record_job_event(session, job_id, status, JobHooks(job_id, row.webhook, row.batch_id))
    return Ended(row.status, row.outputs, row.error, row.progress)


class Ended(NamedTuple):
    """A job's final state as `finish_job` wrote it (what its event stream's last `status` event says)."""

    status: str
    outputs: list[dict[str, Any]] | None
    error: dict[str, Any] | None
    progress: dict[str, Any] | None


def requeue_or_fail(session: Session, job_id: uuid.UUID, *lost: Any) -> str | None:
    """Put a running job that lost its worker back in the queue, or fail it with `worker_lost`
    once its attempts are used up. `lost` says which running job lost its worker (its lease ran
    out; it ran on a given worker). Returns the job's new status, or None when nothing qualified.

    The caller commits, then wakes a worker for it (core.queue.wake_workers), or an idle one finds it.
    """
    max_attempts = get_settings().max_attempts
    now = utcnow()
    running = (Job.id == job_id, Job.status == JobStatus.RUNNING, *lost)
    requeued = session.execute(
        update(Job)
        .where(*running, Job.attempts < max_attempts)
        .values(status=JobStatus.QUEUED, lease_expires_at=None, updated_at=now)
    ).rowcount
    if requeued:
        return JobStatus.QUEUED
    failed = session.execute(
        update(Job).where(*running, Job.attempts >= max_attempts).values(**_worker_lost(max_attempts, now))
    ).rowcount
    if failed:
        record_job_event(session, job_id, JobStatus.FAILED)
    return JobStatus.FAILED if failed else None


def unclaim(session: Session, job_id: uuid.UUID, worker: str | None, attempt: int) -> bool:
    """Undo the claim of a job that never started to run (a worker's claim ahead, workers/next_claim.py):
    queued again with the attempt not counted. False if that attempt no longer holds it. The caller
    commits."""
    undone = session.execute(
        update(Job)
        .where(_running(job_id, attempt), Job.worker == worker)
        .values(
            status=JobStatus.QUEUED,
            attempts=Job.attempts - 1,
            worker=None,
            lease_expires_at=None,
            started_at=None,
            updated_at=utcnow(),
        )
    )
    return undone.rowcount == 1


def hand_back(session: Session, worker: str) -> list[tuple[uuid.UUID, str]]:
    """Requeue (or fail) the jobs that `worker` runs, because it knows they lost their worker: its pool
    process died, or it starts again under the same name. No need to wait for their leases to run out.
    A job another worker runs now is left alone. Returns each job's id and new status; the caller
    commits."""
    running = select(Job.id).where(Job.status == JobStatus.RUNNING, Job.worker == worker)
    handed = []
    for job_id in session.scalars(running).all():
        status = requeue_or_fail(session, job_id, Job.worker == worker)
        if status is not None:
            handed.append((job_id, status))
    return handed


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
