"""Job state changes. Each one is a single conditional UPDATE, so two processes racing on the
same job can never both win: a job is claimed once, finished once, canceled once."""

import uuid
from typing import Any

from sqlalchemy import select, update

from core.db import db_session
from core.models import Job, JobStatus, utcnow


def claim_job(job_id: uuid.UUID, worker: str, device: str | None = None) -> Job | None:
    """Move a queued job to running for `worker` on `device`; None if someone else has it or it ended."""
    with db_session() as session:
        claimed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.RUNNING,
                worker=worker,
                device=device,
                attempts=Job.attempts + 1,
                started_at=utcnow(),
                updated_at=utcnow(),
                error=None,
            )
        ).rowcount
        if claimed != 1:
            return None
        return session.scalars(select(Job).where(Job.id == job_id)).one()


def record_progress(job_id: uuid.UUID, progress: dict[str, Any]) -> bool:
    """Write a running job's progress. False when the job is no longer running (e.g. canceled)."""
    with db_session() as session:
        written = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .values(progress=progress, updated_at=utcnow())
        ).rowcount
    return written == 1


def finish_job(
    job_id: uuid.UUID,
    status: str,
    *,
    outputs: list[dict[str, Any]] | None = None,
    error: dict[str, str] | None = None,
    progress: dict[str, Any] | None = None,
) -> bool:
    """Move a running job to a final status. False if it was not running any more."""
    if status not in JobStatus.FINISHED:
        raise ValueError(f"{status!r} is not a final status")
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "updated_at": utcnow()}
    if outputs is not None:
        values["outputs"] = outputs
    if error is not None:
        values["error"] = error
    if progress is not None:
        values["progress"] = progress
    with db_session() as session:
        return (
            session.execute(
                update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING).values(**values)
            ).rowcount
            == 1
        )
