"""The Celery task that runs jobs: claim the best one for this worker, run its runner, record how it
ended, and go on with the next for a few seconds (`TASK_RUNS_FOR_S`); wake the worker again while there
is work.

A job runs on one database session, opened by the task and handed down to its runner (`JobRun.session`)
and its progress reporter. Each state change is committed as it is made: the claim (with the worker's busy
mark) before the runner starts, progress as it goes, the end. A call that made images ends off the task:
the finisher thread stores them and records the jobs, on a session of its own, while the worker takes its
next job (workers/finisher.py); the wake-up for that job goes out during the call. Leases are renewed
from one thread per process, on a session of its own (workers/lease.py).
"""

import logging
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import torch
from billiard.einfo import ExceptionWithTraceback
from celery import Task
from celery.exceptions import Reject, WorkerLostError
from celery.signals import worker_process_init
from celery.worker.request import Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import get_settings
from core.db import DB_UNAVAILABLE, db_session, get_engine, masked_url
from core.errors import JobError, first_line
from core.events import JobEvents, get_event_store
from core.job_types import TRAINING_TYPES
from core.jobs import claim, finish_job, hand_back, job_status, record_canceled_progress
from core.progress import JobCanceled
from core.queue import RUN_JOB_TASK
from core.scheduling import Claimer
from core.tables import Job, JobStatus
from workers.celery_app import app
from workers.finisher import FINISHER
from workers.fleet import claimer, mark_busy, record_jobs
from workers.fusion import claim_group, run_jobs
from workers.job_run import JobRun, seconds_in_pipeline_calls
from workers.lease import hold_leases
from workers.next_claim import NextClaim
from workers.runners.text2img import Outcome
from workers.wakeup import IDLE_POLL

logger = logging.getLogger(__name__)
T = TypeVar("T")


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
    get_event_store.cache_clear()  # nor its Redis connections


class RunJobRequest(Request):
    """Hands back the job at once when the pool process running it dies (SIGKILL, the OOM killer).

    Celery then puts the message back in the queue (`reject_on_worker_lost`). Requeuing the job
    first lets that redelivery claim it for its next attempt, instead of waiting for its lease to run out
    and the reconciler.
    """

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):  # how the pool hands over its errors
            exc = exc.exc
        if isinstance(exc, WorkerLostError):
            try:
                with db_session() as session:
                    handed = hand_back(session, self.hostname)
                for job_id, status in handed:
                    logger.warning("the process running job %s died; job %s", job_id, status)
            except Exception:
                logger.exception(
                    "could not hand back the jobs of %s; their leases will run out", self.hostname
                )
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


class JobFailed(Exception):
    """Raised by the task of a job that failed (and is recorded failed), so that Celery's log and
    Flower show a failed task. An expected exception (`throws`): logged without a traceback, and,
    with `task_acks_on_failure_or_timeout` (Celery's default), acknowledged, never redelivered."""


# How long a task goes on taking jobs. After each call the task claims the next job itself, rather than
# going back to Celery for the next wake-up: a hand-off (the result sent to the main process, the ack,
# the next message fetched from the broker and passed to the pool) cost a worker several milliseconds a
# job (bench/overhead.py). It stops when it finds no job, after a training job, or once it has run this
# long or this many jobs (a job that fails does not stop it; the task fails at its end): no claim is
# made past this long, so a warm shutdown waits at most this long plus a call, and the task's result,
# which names every job it ran, fits what Celery logs and sends to Flower (`RESULT_MAX_CHARS`). The
# wake-up it sent at its start then carries on.
TASK_RUNS_FOR_S = 5.0
TASK_MAX_JOBS = 100
# Celery cuts a task's result to `resultrepr_maxsize` (1,024 characters by default, about 18 jobs) in its
# log line and in the event Flower reads. A job takes about 60 characters ("job <id>: storing outputs, "):
# room for `TASK_MAX_JOBS` and a last fused call.
RESULT_MAX_CHARS = 64 * (TASK_MAX_JOBS + get_settings().max_fused_images)


@app.task(
    name=RUN_JOB_TASK,
    bind=True,
    Request=RunJobRequest,
    throws=(JobFailed,),
    resultrepr_maxsize=RESULT_MAX_CHARS,
)
def run_job(self: Task, job_id: str) -> str:
    """A wake-up that names `job_id`: claim the best queued job for this worker (core/scheduling.py),
    with the jobs it can be fused with (workers/fusion.py), run them, then claim and run the next best,
    for up to `TASK_RUNS_FOR_S` or `TASK_MAX_JOBS`; return what became of each ("job <id>: storing
    outputs, job <id>: canceled"), which Flower shows as the task's result. Called directly (in-process,
    not by a worker), run the job `job_id` itself, alone.

    Nothing is acknowledged that neither ran nor was handed back: a message this worker's database can't
    place, or that came while the database was unreachable, goes back to the broker (`Reject`).
    """
    woken_by = uuid.UUID(job_id)
    called_directly = bool(self.request.called_directly)
    with db_session() as session:
        jobs = _claim(self, session, woken_by, claimer(only=woken_by if called_directly else None))
        if not jobs:
            logger.info("woken for job %s, but no queued job is this worker's to run", job_id)
            return "no job to run"
        if called_directly:  # in-process: the job is recorded when the call returns
            return _run(session, jobs, defer=False)
        # The next wake-up goes out while this call runs, so that it waits in the broker when the task ends.
        FINISHER.background(_wake_self, "could not wake this worker for its next job")
        return _run_on(session, jobs)


def _run_on(session: Session, jobs: list[Job]) -> str:
    """Run `jobs`, then the jobs claimed after them, until there are none or the task has run long enough
    (`TASK_RUNS_FOR_S`, `TASK_MAX_JOBS`); what became of each. A generation call's next claim starts at
    its last denoising step (workers/next_claim.py); a training job ends the task. Raises `JobFailed`,
    naming every job, if one failed."""
    settings = get_settings()
    ends: list[str] = []
    failed = False
    ran = 0
    started, inside = time.perf_counter(), seconds_in_pipeline_calls()
    until = time.monotonic() + TASK_RUNS_FOR_S
    held: list[Job] = []  # jobs claimed ahead, whose leases the next claim holds until they have run
    while jobs:
        ran += len(jobs)
        generation = not any(job.type in TRAINING_TYPES for job in jobs)
        # With a per-owner running limit the claim counts this call's jobs as running until they end, so
        # it waits for them (an early claim could skip their owner for another's lower-priority job).
        early = generation and ran < TASK_MAX_JOBS and not settings.max_running_jobs
        ahead = NextClaim(_claim_apart, until) if early else None
        try:
            ends.append(_run(session, jobs, defer=True, ahead=ahead))
        except JobFailed as failure:
            ends.append(str(failure))
            failed = True
        except BaseException:
            if ahead is not None:
                ahead.give_back()
            raise
        finally:
            NextClaim.release(held)
        session.expunge_all()  # the jobs that ran are the finisher's now
        if ahead is not None and ahead.started:
            jobs = held = ahead.jobs()  # claimed before the deadline: they run whatever the time now
        elif generation and time.monotonic() < until and ran < TASK_MAX_JOBS:
            jobs, held = _claim_next(session), []
        else:
            break
    seconds = time.perf_counter() - started
    outside = seconds - (seconds_in_pipeline_calls() - inside)
    # The worker's own time per job (claims, hand-offs, checks), what bench/overhead.py reads.
    per_job = 1000 * outside / ran
    logger.info("task ran %d jobs in %.2fs; outside the pipeline calls: %.1f ms a job", ran, seconds, per_job)
    if failed:
        raise JobFailed(", ".join(ends))
    return ", ".join(ends)


def _claim_apart() -> list[Job]:
    """`_claim_next` on a session of its own (the next-claim thread's)."""
    with db_session() as session:
        return _claim_next(session)


def _claim_for(session: Session, who: Claimer, loaded_only: bool = False) -> list[Job]:
    """The best job for `who` and its fusion partners, claimed and marked as this worker's, uncommitted;
    with `loaded_only`, only if its model is loaded here (core/jobs.py `claim`)."""
    settings = get_settings()
    jobs = claim(session, who, loaded_only=loaded_only)
    if jobs and settings.fusion:
        jobs = claim_group(session, jobs[0], who, settings.max_fused_images)
    if jobs:
        mark_busy(session, jobs[0].id, jobs[0].model)
    return jobs


def _claim_next(session: Session) -> list[Job]:
    """The next jobs of a task that has run some, committed: the best job, if its model is loaded here.
    [] when the best job needs a load: the task ends, and the job goes as a new task's would, to the
    worker a wake-up reaches first (an idle one that has the model, if one has: bench/affinity.py lost
    cache hits while tasks took such jobs). [] while the database is unreachable (the wake-up the task
    sent, or the idle poll, finds them once it is back)."""
    try:
        # An affinity rule, so only with affinity on: off, a task takes the best job, whatever it needs.
        jobs = _claim_for(session, claimer(), loaded_only=get_settings().affinity)
        session.commit()
        return jobs
    except DB_UNAVAILABLE as error:
        session.rollback()
        logger.warning("could not claim this worker's next job (%s)", first_line(error.orig or error))
        return []


def _claim(task: Task, session: Session, woken_by: uuid.UUID, who: Claimer) -> list[Job]:
    """Claim the best job for `who` and its fusion partners, committed; give the message back if it
    can't be placed."""
    try:
        jobs = _claim_for(session, who)
        # Only when there is nothing to run (a read less per job): a message that names a job this
        # database does not hold is another deployment's.
        if not jobs and not who.only and session.scalar(select(Job.id).where(Job.id == woken_by)) is None:
            _misconfigured(task, woken_by)
        session.commit()
    except DB_UNAVAILABLE as error:
        session.rollback()
        delay = get_settings().idle_poll_s
        logger.warning(
            "the database is unreachable (%s); giving the wake-up for job %s back in %.1fs",
            first_line(error.orig or error),
            woken_by,
            delay,
        )
        time.sleep(delay)  # so that a worker does not spin on its own redeliveries during an outage
        raise Reject(requeue=True) from None
    return jobs


def _misconfigured(task: Task, job_id: uuid.UUID) -> None:
    """A message names a job this worker's database does not hold: its broker is another deployment's
    too. Say so loudly, stop consuming that queue, and give the message back to whoever it was for."""
    queue = (task.request.delivery_info or {}).get("routing_key") or "?"
    logger.error(
        "MISCONFIGURED: a message in queue %r names job %s, which this worker's database (%s) does not "
        "hold: this worker shares its broker with a diffq whose database is another. Giving the message "
        "back and no longer consuming %r; set DIFFQ_DATABASE_URL and DIFFQ_BROKER_URL to one deployment's.",
        queue,
        job_id,
        masked_url(get_settings().database_url),
        queue,
    )
    try:
        app.control.cancel_consumer(queue, destination=[task.request.hostname])
    except Exception:
        logger.exception("could not stop consuming %r", queue)
    time.sleep(1.0)  # the cancel reaches the main process before it can hand this worker the message again
    raise Reject(requeue=True)


def _wake_self() -> None:
    """Wake this worker again while its queues hold work for it (workers/wakeup.py); on a session of its
    own (the finisher's thread)."""
    try:
        with db_session() as session:
            IDLE_POLL.wake_self(session)
    except DB_UNAVAILABLE as error:  # the idle poll finds the work once the database is back
        logger.warning("could not look for this worker's next job (%s)", first_line(error))


def _until_written(session: Session, write: Callable[[], T], what: str) -> T:
    """`write()` committed, tried again while the database is unreachable, for up to twice the lease:
    a job that ran is recorded once the database is back, rather than run again. After that its lease
    has run out and the reconciler may have given it to another worker, which the write, fenced by the
    attempt, finds out."""
    give_up = time.monotonic() + 2 * get_settings().lease_s
    delay = 0.5
    while True:
        try:
            result = write()
            session.commit()
            return result
        except DB_UNAVAILABLE as error:
            session.rollback()
            if time.monotonic() + delay > give_up:
                raise
            logger.warning("could not record %s (%s); trying again in %.1fs", what, first_line(error), delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _run(session: Session, jobs: list[Job], defer: bool, ahead: NextClaim | None = None) -> str:
    """Run claimed jobs (one, or a fused group) to their ends and record each; what became of each.
    Raises `JobFailed` if one failed.

    With `defer`, a call that made images leaves storing them and recording its jobs to the finisher
    (workers/finisher.py), and returns while it works. `ahead` starts at the call's last step."""
    runs = [JobRun.from_job(job, session) for job in jobs]
    for run, job in zip(runs, jobs, strict=True):
        # Each job's event stream (core/events.py): every step, previews, the end; and its cancel flag.
        run.events = JobEvents.for_job(job)
        run.events.started(worker=job.worker, attempt=job.attempts)
        run.defer_outputs = defer
        run.on_last_step = ahead.start if ahead is not None else None
    if len(jobs) > 1:
        logger.info("running %d jobs as one call: %s", len(jobs), ", ".join(str(job.id) for job in jobs))
    leases = [(run.job_id, run.attempt) for run in runs]
    started = time.monotonic()
    with hold_leases(leases, runs[0].settings.lease_s):
        outcomes = run_jobs(runs)
    busy_seconds = time.monotonic() - started
    # From here on only `runs` say which job is which: a rollback (after a failed write) expires the
    # session's Job objects, and reading one again would need the database.
    if any(run.pending is not None for run in runs):
        FINISHER.finish(lambda: _finish(runs, outcomes, busy_seconds))
        return ", ".join(f"job {run.job_id}: storing outputs" for run in runs)
    statuses = _end(session, runs, outcomes)
    record_jobs(session, runs, busy_seconds)
    ends = [
        f"job {run.job_id} failed: {status['code']}: {status['message']}"
        if isinstance(status, dict)
        else f"job {run.job_id}: {status}"
        for run, status in zip(runs, statuses, strict=True)
    ]
    if any(isinstance(status, dict) for status in statuses):
        raise JobFailed(", ".join(ends))
    return ", ".join(ends)


def _end(session: Session, runs: list[JobRun], outcomes: list[Outcome]) -> list[str | dict[str, str]]:
    """Store what `runs` left pending, record each job's end and publish it; each one's status or error."""
    statuses = []
    for run, outcome in zip(runs, outcomes, strict=True):
        if run.pending is not None and not isinstance(outcome, BaseException):
            try:
                run.store_pending()
            except Exception as error:  # canceled since its last step, or the upload failed
                outcome = error
        statuses.append(_record(session, run, outcome))
    for run, status in zip(runs, statuses, strict=True):
        if status != JobStatus.CANCELED:
            _publish_end(session, run)
    return statuses


def _finish(runs: list[JobRun], outcomes: list[Outcome], busy_seconds: float) -> None:
    """The finisher's part of a call (workers/finisher.py): store, record, count; on a session of its own,
    holding the jobs' leases while it works."""
    with (
        db_session() as session,
        hold_leases([(run.job_id, run.attempt) for run in runs], runs[0].settings.lease_s),
    ):
        for run in runs:
            run.session = session
        _end(session, runs, outcomes)
        record_jobs(session, runs, busy_seconds)


def _publish_end(session: Session, run: JobRun) -> None:
    """The job's final state, as Postgres has it (as its end was written, or read again), to its event
    stream (best effort: a reader that misses it ends the stream from Postgres)."""
    if run.events is None:
        return
    if run.ended is not None:
        run.events.finished(run.ended)
        return
    try:
        job = session.get(Job, run.job_id, populate_existing=True)
    except Exception as error:  # the database went away after the end was recorded
        logger.warning("could not read job %s to end its event stream: %s", run.job_id, first_line(error))
        return
    if job is not None:
        run.events.finished(job)


def log_failure(job_id: str, error: BaseException) -> None:
    """Log a job's failure: an expected one (a `JobError` with its own code: `bad_model`, `bad_input`,
    ...; the user's to fix, and recorded on the job) as one WARNING line with its code and message; any
    other (a bug, `internal`) as an ERROR with its traceback."""
    if isinstance(error, JobError) and error.code != "internal":
        logger.warning("job %s failed: %s: %s", job_id, error.code, first_line(error))
    else:
        logger.error("job %s failed", job_id, exc_info=error)


def _record(session: Session, run: JobRun, outcome: Outcome) -> str | dict[str, str]:
    """Record how a job ended: its final status, or, for a failed job, its error."""
    job_id, attempt = str(run.job_id), run.attempt
    if isinstance(outcome, JobCanceled):
        # Raised out of the step callback: the pipeline stopped there, nothing was decoded or stored.
        logger.info("job %s was canceled or taken over while running; stopped", job_id)
        session.rollback()
        if run.reporter is not None:
            _until_written(
                session,
                lambda: record_canceled_progress(session, run.job_id, run.reporter.current),
                f"where job {job_id} stopped",
            )
        return JobStatus.CANCELED
    progress = run.reporter.current if run.reporter else None
    if isinstance(outcome, BaseException):
        log_failure(job_id, outcome)
        session.rollback()  # a runner's write may have failed halfway
        error = error_for(outcome)
        run.ended = _until_written(
            session,
            lambda: finish_job(
                session, run.job_id, attempt, JobStatus.FAILED, error=error, progress=progress
            ),
            f"the failure of job {job_id}",
        )
        return error
    run.ended = _until_written(
        session,
        lambda: finish_job(
            session, run.job_id, attempt, JobStatus.SUCCEEDED, outputs=outcome, progress=progress
        ),
        f"the end of job {job_id}",
    )
    if run.ended is None:
        if job_status(session, run.job_id) == JobStatus.CANCELED:
            # Canceled between the last check and the finish: a canceled job keeps no outputs.
            logger.info("job %s was canceled as it finished; deleting its outputs", job_id)
            for output in outcome:
                run.storage.delete(output["key"])
        else:
            # Taken over after its last step: the outputs recorded are another attempt's.
            logger.info("job %s attempt %d ended but the job is no longer its own", job_id, attempt)
        return JobStatus.CANCELED
    logger.info("job %s succeeded in attempt %d", job_id, attempt)
    return JobStatus.SUCCEEDED
