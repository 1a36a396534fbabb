"""Storing a call's images and recording its jobs' ends off the denoising path, so that the PNG encode and
upload of one call overlap the claim and denoising of the next.

After a pipeline call returns, the task (workers/tasks.py) hands the call's jobs whose images wait to be
stored (`JobRun.pending`, see `JobRun.save_images`) to the pool process's one finisher thread, and goes
on with its next job while the thread encodes and uploads the PNGs, then marks each job
succeeded (or failed with the upload's error) in one transaction with the worker's row. Bounded: one call
in flight; handing over a second waits until the first is recorded, so at most one call's decoded images
are held.

A job is marked succeeded only after its outputs are stored, and its lease is renewed while the thread
works: a process killed before the end is recorded leaves the job running, and it is handed back (the
next pool process of this worker, or the main process when a task was under way) or taken over once its
lease runs out; never succeeded without its outputs. A pool process that stops cleanly waits for the
thread first (`drain`, at `worker_process_shutdown`).
"""

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

logger = logging.getLogger(__name__)


class Finisher:
    """One background thread, made on first use in the process that uses it (a pool process forks after
    import); `finish` keeps at most one call in flight."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._last: Future[None] | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="diffq-finisher")
        return self._executor

    def finish(self, work: Callable[[], None]) -> None:
        """Run `work` (store a call's images, record its jobs) on the thread, once the call before is done."""
        with self._lock:
            self._wait_last()
            self._last = self._pool().submit(self._logged, work, "could not finish a call's jobs")

    def background(self, work: Callable[[], None], what: str) -> None:
        """Run `work` on the thread, after what is already there; an exception is logged with `what`."""
        with self._lock:
            self._pool().submit(self._logged, work, what)

    def drain(self) -> None:
        """Return once everything handed over is done."""
        with self._lock:
            if self._executor is not None:
                self._executor.submit(lambda: None).result()

    def _wait_last(self) -> None:
        if self._last is not None:
            self._last.result()
            self._last = None

    @staticmethod
    def _logged(work: Callable[[], None], what: str) -> None:
        try:
            work()
        except Exception:  # the job's lease runs out and it runs again; nothing is recorded wrongly
            logger.exception(what)


FINISHER = Finisher()
