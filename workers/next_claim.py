"""A task's next claim, made while the current call decodes its images.

A task runs jobs one call after another (workers/tasks.py). The claim of the next job (one UPDATE over the
jobs table, the worker's busy mark and a durable commit: 3-5 ms on a shared 2-core machine) used to wait
for the call to end. It now starts when the call's last denoising step is recorded
(`ProgressReporter.on_last_step`), on a thread of the pool process's own, and runs while the pipeline
decodes the latents (the VAE, several milliseconds on a CPU, more for big images on a GPU), makes the
images and the task hands them to the finisher (workers/finisher.py). The choice is still made by the
claim's SQL (core/scheduling.py) at that moment, a few milliseconds before the worker is free, never a
job ahead.

Only after a generation call, only while the task goes on (`TASK_RUNS_FOR_S`, `TASK_MAX_JOBS`) and not
with a per-owner running limit (the claim would count the ending jobs as running); like every claim a
task makes after its first, it takes the best job only if its model is loaded here. If the call stops
before its last step (canceled, failed) nothing starts and the task claims as before. A call that goes
on after its last step (an out-of-memory retry re-runs it) keeps the jobs claimed: their leases are held
from the claim. If
the task ends by an unexpected error after the next jobs were claimed, it gives them back to the queue
as they were (`give_back`); a process that dies leaves them to `hand_back` and the leases, as any
claimed job.
"""

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from core.config import get_settings
from core.db import db_session
from core.errors import first_line
from core.jobs import unclaim
from core.tables import Job
from workers.lease import LEASES

logger = logging.getLogger(__name__)

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """One thread, made on first use in the process that uses it (a pool process forks after import)."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffq-next-claim")
        return _executor


class NextClaim:
    """The next claim of one task: `start` it (at a last step, before `until` on the monotonic clock; again
    is a no-op), then take its jobs. Their leases are held from the claim until the task has run them
    (`release`), so that a call that goes on after its last step (an out-of-memory retry) can't let them
    run out."""

    def __init__(self, claim: Callable[[], list[Job]], until: float) -> None:
        self._claim = claim
        self._until = until
        self._future: Future[list[Job]] | None = None

    @property
    def started(self) -> bool:
        return self._future is not None

    def start(self) -> None:
        if self._future is None and time.monotonic() < self._until:
            self._future = _pool().submit(self._claim_holding)

    def _claim_holding(self) -> list[Job]:
        jobs = self._claim()
        LEASES.hold(_leases(jobs), get_settings().lease_s)
        return jobs

    def jobs(self) -> list[Job]:
        """The jobs claimed (committed; detached from the claim's session); waits for the claim."""
        assert self._future is not None, "the next claim never started"
        return self._future.result()

    @staticmethod
    def release(jobs: list[Job]) -> None:
        """Stop holding the leases of `jobs`, claimed ahead, once the task has run them."""
        LEASES.release(_leases(jobs))

    def give_back(self) -> None:
        """Put the jobs claimed, if any, back in the queue as they were (`unclaim`: no attempt used)."""
        if self._future is None:
            return
        try:
            jobs = self._future.result()
            with db_session() as session:
                for job in jobs:
                    unclaim(session, job.id, job.worker, job.attempts)
            self.release(jobs)
        except Exception as error:  # their leases run out and the reconciler gives them back
            logger.warning("could not give back the jobs claimed next (%s)", first_line(error))


def _leases(jobs: list[Job]) -> list[tuple[Any, int]]:
    return [(job.id, job.attempts) for job in jobs]
