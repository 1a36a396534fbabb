"""Makes the broker agree with the jobs table again. Run every DIFFQ_RECONCILE_INTERVAL_S by
`diffq beat`, or once by `diffq reconcile`.

The jobs table is the source of truth; the broker only carries messages, and can lose them. Each
pass:

- requeues running jobs whose lease ran out (their worker died), or fails them with
  `worker_lost` when their attempts are used up;
- sends queued jobs that never reached the broker: those without `enqueued_at`, once they have
  been queued for DIFFQ_RESEND_AFTER_S (the send failed, or its sender died before recording it);
- sends every queued job again when the broker lost the messages it held (Redis flushed, or
  restarted without its data), which `BrokerWatch` notices.

A job sent twice is harmless: a worker runs a job only if its claim succeeds, so the second
delivery is skipped. Each job is sent again once per loss, never on every pass, so a deep
backlog of queued jobs is not multiplied in the broker.

A pass runs on the caller's session and commits each step before it talks to the broker: a job is
committed queued before it is sent, and a loss is recorded even when the send that follows fails.
"""

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.config import get_settings
from core.jobs import expired_jobs, requeue_or_fail
from core.queue import enqueue_jobs, get_celery
from core.routing import direct_queue
from core.tables import Job, JobStatus, WorkerNode, utcnow

logger = logging.getLogger(__name__)

MARKER_QUEUE = "diffq.broker-marker"


@dataclass
class BrokerWatch:
    """Tells whether the broker lost the messages it held since the last check.

    The broker keeps one numbered marker message in a queue of its own, which no worker reads.
    Each check takes the marker out and puts the next number in. No marker, or an older one than
    this watch last put in (Redis brought back from an old snapshot), means the broker forgot
    what it held. Only kombu's generic queue operations are used, so it works on every broker.
    """

    queue: str = MARKER_QUEUE
    last_put: int | None = None

    def broker_forgot(self, app: Celery) -> bool:
        with (
            app.connection_for_write() as connection,
            connection.SimpleQueue(self.queue, no_ack=True) as marker,
        ):
            found: list[int] = []
            while True:
                try:
                    found.append(int(marker.get(block=False).payload))
                except marker.Empty:
                    break
            newest = max(found, default=None)
            forgot = newest is None or (self.last_put is not None and newest < self.last_put)
            self.last_put = max(newest or 0, self.last_put or 0) + 1
            marker.put(self.last_put)
        return forgot


BROKER_WATCH = BrokerWatch()


def requeue_expired(session: Session) -> dict[str, int]:
    """Requeue running jobs whose lease ran out, or fail them with `worker_lost` when their
    attempts are used up. Each change is conditional, so two reconcilers never both act.

    Commits each change as it is made, then sends the requeued jobs."""
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
    try:
        enqueue_jobs(session, requeued)
    except Exception:
        # They stay without enqueued_at, so a later pass sends them.
        logger.exception("could not send %d requeued jobs to the broker", len(requeued))
    return {"requeued": len(requeued), "worker_lost": failed}


def forget_enqueued(session: Session) -> int:
    """The broker lost its messages: mark every queued job as not in it any more. The caller commits."""
    return session.execute(
        update(Job)
        .where(Job.status == JobStatus.QUEUED, Job.enqueued_at.is_not(None))
        .values(enqueued_at=None)
    ).rowcount


def send_unsent(session: Session, queued_before: datetime | None) -> int:
    """Send the queued jobs the broker has not accepted; with `queued_before`, only those that
    have been queued since before then (so as not to race a sender that is about to record it).
    `enqueue_jobs` commits what it records."""
    query = select(Job.id).where(Job.status == JobStatus.QUEUED, Job.enqueued_at.is_(None))
    if queued_before is not None:
        query = query.where(Job.updated_at < queued_before)
    job_ids = list(session.scalars(query.order_by(Job.created_at)))
    enqueue_jobs(session, job_ids)
    if job_ids:
        logger.warning("sent %d queued jobs that were not in the broker", len(job_ids))
    return len(job_ids)


def rescue_direct_queues(session: Session, app: Celery) -> int:
    """Move the messages left in the direct queues of workers that are gone (no heartbeat for
    DIFFQ_WORKER_STALE_S) to the shared queues; return how many jobs were sent again.

    Affinity routing sends a job to one worker's own queue; if that worker never comes back under
    its name, nothing else reads that queue. A worker restarted under the same name takes them itself.
    `enqueue_jobs` commits what it records.
    """
    settings = get_settings()
    stale_before = utcnow() - timedelta(seconds=settings.worker_stale_s)
    gone = session.scalars(select(WorkerNode).where(WorkerNode.last_seen < stale_before)).all()
    queues = [direct_queue(settings.queue, worker.name) for worker in gone]
    session.commit()  # ends the read before the broker is drained
    job_ids: list[uuid.UUID] = []
    with app.connection_for_write() as connection:
        for queue in queues:
            with connection.SimpleQueue(queue, no_ack=True) as stranded:
                while True:
                    try:
                        message = stranded.get(block=False)
                    except stranded.Empty:
                        break
                    args = message.payload[0] if message.payload else []
                    if args:
                        job_ids.append(uuid.UUID(args[0]))
    if job_ids:
        logger.warning("moving %d jobs from the queues of workers that are gone", len(job_ids))
        enqueue_jobs(session, job_ids)
    return len(job_ids)


def reconcile_once(
    session: Session, watch: BrokerWatch = BROKER_WATCH, resend_queued: bool = False
) -> dict[str, int]:
    """One pass. `resend_queued` sends every queued job again, as after a broker loss: for an
    operator who knows the broker lost messages that its marker could not tell. Commits each step."""
    counts = requeue_expired(session)
    forgot = watch.broker_forgot(get_celery())
    if forgot or resend_queued:
        lost = forget_enqueued(session)
        session.commit()
        why = "the broker lost its messages (new, flushed or restarted)" if forgot else "asked to"
        if lost:
            logger.warning("%s: sending all %d queued jobs again", why, lost)
        else:  # a first start, or an empty broker: nothing was lost
            logger.info("no broker marker yet and no queued job to send again")
    resend_after = timedelta(seconds=get_settings().resend_after_s)
    counts["resent"] = send_unsent(session, None if forgot or resend_queued else utcnow() - resend_after)
    counts["rescued"] = rescue_direct_queues(session, get_celery())
    return counts
