"""The Celery task that runs one job: claim it, run its runner, record how it ended."""

import logging
import uuid

import torch
from billiard.einfo import ExceptionWithTraceback
from celery import Task
from celery.exceptions import WorkerLostError
from celery.signals import worker_process_init
from celery.worker.request import Request

from core.db import get_engine
from core.errors import JobError
from core.jobs import claim_job, finish_job, hand_back, job_status, record_canceled_progress
from core.progress import JobCanceled
from core.queue import RUN_JOB_TASK
from core.tables import JobStatus
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
    # not share its connections.
    get_engine().dispose(close=False)


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
                status = hand_back(uuid.UUID(self.args[0]), self.hostname)
                if status:
                    logger.warning("the process running job %s died; job %s", self.args[0], status)
            except Exception:
                logger.exception("could not hand back job %s; its lease will run out", self.args[0])
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class JobFailed(Exception):
    """Raised by the task of a job that failed (and is recorded failed), so that Celery's log and
    Flower show a failed task. An expected exception (`throws`): logged without a traceback, and,
    with `task_acks_on_failure_or_timeout` (Celery's default), acknowledged, never redelivered."""


@app.task(name=RUN_JOB_TASK, bind=True, Request=RunJobRequest, throws=(JobFailed,))
def run_job(self: Task, job_id: str) -> str:
    job = claim_job(uuid.UUID(job_id), worker=self.request.hostname or "worker", device=device_label())
    if job is None:
        # Already taken, finished or canceled: a duplicate delivery must not run it again.
        logger.info("job %s is not queued; skipping this delivery", job_id)
        return "skipped"
    run = JobRun.from_job(job)
    outputs: list[dict] = []
    error: dict[str, str] | None = None
    # The worker's row says what it has loaded before the job is seen to end (core/worker_nodes.py).
    with running(job, run), hold_lease(job.id, job.attempts, run.settings.lease_s):
        try:
            runner = RUNNERS.get(job.type)
            if runner is None:
                raise JobError(f"this worker has no runner for job type '{job.type}'", code="bad_input")
            outputs = run_with_oom_retry(runner, run)
        except JobCanceled:
            # Raised out of the step callback: the pipeline stopped there, nothing was decoded or stored.
            logger.info("job %s was canceled or taken over while running; stopped", job_id)
            if run.reporter is not None:
                record_canceled_progress(job.id, run.reporter.current)
            return JobStatus.CANCELED
        except Exception as exc:
            logger.exception("job %s failed", job_id)
            error = error_for(exc)
    progress = run.reporter.current if run.reporter else None
    if error is not None:
        finish_job(job.id, job.attempts, JobStatus.FAILED, error=error, progress=progress)
        raise JobFailed(f"job {job_id} failed: {error['code']}: {error['message']}")
    if not finish_job(job.id, job.attempts, JobStatus.SUCCEEDED, outputs=outputs, progress=progress):
        if job_status(job.id) == JobStatus.CANCELED:
            # Canceled between the last check and the finish: a canceled job keeps no outputs.
            logger.info("job %s was canceled as it finished; deleting its outputs", job_id)
            for output in outputs:
                run.storage.delete(output["key"])
        else:
            # Taken over after its last step: the outputs recorded are another attempt's.
            logger.info("job %s attempt %d ended but the job is no longer its own", job_id, job.attempts)
        return JobStatus.CANCELED
    logger.info("job %s succeeded in attempt %d", job_id, job.attempts)
    return JobStatus.SUCCEEDED
