"""The Celery task that runs one job: claim it, run its runner, record how it ended.

A job runs on one database session, opened by the task and handed down to its runner (`JobRun.session`),
its progress reporter and the fleet's bookkeeping. Each state change is committed as it is made: the
claim before the runner starts, progress as it goes, the end. The lease is renewed from a thread, on a
session of its own (workers/lease.py).
"""

import logging
import uuid

import torch
from billiard.einfo import ExceptionWithTraceback
from celery import Task
from celery.exceptions import WorkerLostError
from celery.signals import worker_process_init
from celery.worker.request import Request
from sqlalchemy.orm import Session

from core.db import db_session, get_engine
from core.errors import JobError
from core.events import JobEvents, get_event_store
from core.jobs import claim_job, finish_job, hand_back, job_status, record_canceled_progress
from core.progress import JobCanceled
from core.queue import RUN_JOB_TASK
from core.tables import Job, JobStatus
from workers.celery_app import app
from workers.fleet import device_label, running
from workers.job_run import JobRun
from workers.lease import hold_lease
from workers.oom import run_with_oom_retry
from workers.runners import RUNNERS

logger = logging.getLogger(__name__)


def error_for(exc: BaseException) -> dict[str, str]:
    """The `error` recorded on a job that raised `exc`."""
    if isinstance(exc, JobError):
        return exc.as_dict()
    if isinstance(exc, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(exc).lower():
        return {
            "code": "out_of_memory",
            "message": f"the device ran out of memory ({exc}); try fewer or smaller images",
        }
    return {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}


@worker_process_init.connect
def _own_db_connections(**_: object) -> None:
    # A pool process forked after the main process used the database (see RunJobRequest) must
    # not share its connections (nor its Redis ones).
    get_engine().dispose(close=False)
    get_event_store.cache_clear()


class RunJobRequest(Request):
    """Hands a job back at once when the pool process running it dies (SIGKILL, the OOM killer).

    Celery then puts the message back in the queue (`reject_on_worker_lost`). Requeuing the job
    first lets that redelivery run it as its next attempt, instead of being skipped while the dead
    attempt's lease runs out and waiting for the reconciler.
    """

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):  # how the pool hands over its errors
            exc = exc.exc
        if isinstance(exc, WorkerLostError):
            try:
                with db_session() as session:
                    status = hand_back(session, uuid.UUID(self.args[0]), self.hostname)
                if status:
                    logger.warning("the process running job %s died; job %s", self.args[0], status)
            except Exception:
                logger.exception("could not hand back job %s; its lease will run out", self.args[0])
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


def job_fresh(session: Session, job: Job) -> Job:
    """The job as the database has it now, once it has ended."""
    session.refresh(job)
    return job


class JobFailed(Exception):
    """Raised by the task of a job that failed (and is recorded failed), so that Celery's log and
    Flower show a failed task. An expected exception (`throws`): logged without a traceback, and,
    with `task_acks_on_failure_or_timeout` (Celery's default), acknowledged, never redelivered."""


@app.task(name=RUN_JOB_TASK, bind=True, Request=RunJobRequest, throws=(JobFailed,))
def run_job(self: Task, job_id: str) -> str:
    with db_session() as session:
        return _run(session, self.request.hostname or "worker", job_id)


def _run(session: Session, worker: str, job_id: str) -> str:
    job = claim_job(session, uuid.UUID(job_id), worker=worker, device=device_label())
    session.commit()
    if job is None:
        # Already taken, finished or canceled: a duplicate delivery must not run it again.
        logger.info("job %s is not queued; skipping this delivery", job_id)
        return "skipped"
    run = JobRun.from_job(job, session)
    run.events = events = JobEvents.for_job(job)
    events.status(JobStatus.RUNNING, worker=worker, attempt=job.attempts)
    outputs: list[dict] = []
    error: dict[str, str] | None = None
    # The worker's row says what it has loaded before the job is seen to end (core/worker_nodes.py).
    with running(session, job, run), hold_lease(job.id, job.attempts, run.settings.lease_s):
        try:
            runner = RUNNERS.get(job.type)
            if runner is None:
                raise JobError(f"this worker has no runner for job type '{job.type}'", code="bad_input")
            outputs = run_with_oom_retry(runner, run)
        except JobCanceled:
            # Raised out of the step callback: the pipeline stopped there, nothing was decoded or stored.
            logger.info("job %s was canceled or taken over while running; stopped", job_id)
            session.rollback()
            if run.reporter is not None:
                record_canceled_progress(session, job.id, run.reporter.current)
                session.commit()
            return JobStatus.CANCELED
        except Exception as exc:
            logger.exception("job %s failed", job_id)
            session.rollback()  # a runner's write may have failed halfway
            error = error_for(exc)
    progress = run.reporter.current if run.reporter else None
    if error is not None:
        finish_job(session, job.id, job.attempts, JobStatus.FAILED, error=error, progress=progress)
        session.commit()
        events.finished(job_fresh(session, job))
        raise JobFailed(f"job {job_id} failed: {error['code']}: {error['message']}")
    finished = finish_job(
        session, job.id, job.attempts, JobStatus.SUCCEEDED, outputs=outputs, progress=progress
    )
    session.commit()
    if not finished:
        if job_status(session, job.id) == JobStatus.CANCELED:
            # Canceled between the last check and the finish: a canceled job keeps no outputs.
            logger.info("job %s was canceled as it finished; deleting its outputs", job_id)
            for output in outputs:
                run.storage.delete(output["key"])
        else:
            # Taken over after its last step: the outputs recorded are another attempt's.
            logger.info("job %s attempt %d ended but the job is no longer its own", job_id, job.attempts)
        return JobStatus.CANCELED
    events.finished(job_fresh(session, job))
    logger.info("job %s succeeded in attempt %d", job_id, job.attempts)
    return JobStatus.SUCCEEDED
