"""The Celery task that runs one job: claim it, run its runner, record how it ended."""

import logging
import uuid

import torch
from celery import Task

from core.errors import JobError
from core.jobs import claim_job, finish_job
from core.models import JobStatus
from core.progress import JobCanceled
from core.queue import RUN_JOB_TASK
from workers.celery_app import app
from workers.fleet import device_label, running
from workers.job_run import JobRun
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


@app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self: Task, job_id: str) -> str:
    job = claim_job(uuid.UUID(job_id), worker=self.request.hostname or "worker", device=device_label())
    if job is None:
        # Already taken, finished or canceled: a duplicate delivery must not run it again.
        logger.info("job %s is not queued; skipping this delivery", job_id)
        return "skipped"
    run = JobRun.from_job(job)
    outputs: list[dict] = []
    error: dict[str, str] | None = None
    # The worker's row says what it has loaded before the job is seen to end (core/fleet.py).
    with running(job, run):
        try:
            runner = RUNNERS.get(job.type)
            if runner is None:
                raise JobError(f"this worker has no runner for job type '{job.type}'", code="bad_input")
            outputs = run_with_oom_retry(runner, run)
        except JobCanceled:
            logger.info("job %s was canceled while running", job_id)
            return JobStatus.CANCELED
        except Exception as exc:
            logger.exception("job %s failed", job_id)
            error = error_for(exc)
    progress = run.reporter.current if run.reporter else None
    if error is not None:
        finish_job(job.id, JobStatus.FAILED, error=error, progress=progress)
        return JobStatus.FAILED
    finish_job(job.id, JobStatus.SUCCEEDED, outputs=outputs, progress=progress)
    return JobStatus.SUCCEEDED
