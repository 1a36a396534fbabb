"""Brings back jobs that lost their worker. Run periodically by `diffq beat`."""

import logging
from typing import Any

from sqlalchemy import update

from core.config import get_settings
from core.db import db_session
from core.jobs import WORKER_LOST, expired_jobs
from core.models import Job, JobStatus, utcnow
from core.queue import enqueue_job

logger = logging.getLogger(__name__)


def requeue_expired() -> dict[str, int]:
    """Requeue running jobs whose lease ran out, or fail them with `worker_lost` when their
    attempts are used up. Each change is conditional, so two reconcilers never both act."""
    max_attempts = get_settings().max_attempts
    requeued = failed = 0
    for job_id in expired_jobs():
        now = utcnow()
        expired = (Job.id == job_id, Job.status == JobStatus.RUNNING, Job.lease_expires_at < now)
        with db_session() as session:
            back = session.execute(
                update(Job)
                .where(*expired, Job.attempts < max_attempts)
                .values(status=JobStatus.QUEUED, lease_expires_at=None, updated_at=now)
            ).rowcount
            lost = 0
            if not back:
                error: dict[str, Any] = {
                    **WORKER_LOST,
                    "message": WORKER_LOST["message"].format(attempts=max_attempts),
                }
                lost = session.execute(
                    update(Job)
                    .where(*expired, Job.attempts >= max_attempts)
                    .values(
                        status=JobStatus.FAILED,
                        error=error,
                        lease_expires_at=None,
                        finished_at=now,
                        updated_at=now,
                    )
                ).rowcount
        if back:
            enqueue_job(job_id)
            requeued += 1
            logger.warning("job %s lost its worker; requeued", job_id)
        failed += lost
    return {"requeued": requeued, "worker_lost": failed}


def reconcile_once() -> dict[str, int]:
    return requeue_expired()
