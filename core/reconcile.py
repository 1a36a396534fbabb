"""Brings back the jobs whose worker is gone. Run every DIFFQ_RECONCILE_INTERVAL_S by `diffq beat`, or
once by `diffq reconcile`.

The jobs table is the queue (core/scheduling.py): a job that is `queued` there runs as soon as a worker
that serves its queue is free, whatever the broker holds, since an idle worker looks for work in the
table itself. What the reconciler still does is notice the workers that died without saying so: a
running job whose lease ran out lost its worker, and is set back to `queued` (or failed with
`worker_lost` once its attempts are used up), then workers are woken for it.

Each change is one conditional UPDATE, committed before any message is sent, so two reconcilers never
both act on a job and a failed send leaves the job queued for an idle worker to find.
"""

import logging
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.jobs import expired_jobs, requeue_or_fail
from core.queue import Waiting, wake_workers
from core.tables import Job, JobStatus, utcnow

logger = logging.getLogger(__name__)


def requeue_expired(session: Session) -> dict[str, int]:
    """Requeue running jobs whose lease ran out, or fail them with `worker_lost` when their attempts
    are used up; then wake workers for the requeued ones. Commits each change as it is made."""
    requeued: list[uuid.UUID] = []
    failed = 0
    for job_id in expired_jobs(session):
        status = requeue_or_fail(session, job_id, Job.lease_expires_at < utcnow())
        session.commit()
        if status == JobStatus.QUEUED:
            requeued.append(job_id)
            logger.warning("job %s lost its worker; requeued", job_id)
        elif status == JobStatus.FAILED:
            failed += 1
            logger.warning("job %s lost its worker; attempts used up, failed", job_id)
    if requeued:
        try:
            rows = session.execute(
                select(Job.id, Job.queue, Job.type, Job.model).where(Job.id.in_(requeued))
            ).all()
            wake_workers(session, [Waiting(*row) for row in rows])
        except Exception:
            logger.exception(
                "could not wake workers for %d requeued jobs; idle ones will find them", len(requeued)
            )
        session.commit()
    return {"requeued": len(requeued), "worker_lost": failed}


def reconcile_once(session: Session) -> dict[str, int]:
    """One pass; the counts of what it did, none when it did nothing. Commits each step."""
    return {name: count for name, count in requeue_expired(session).items() if count}
