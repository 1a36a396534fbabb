"""Per-step progress, coalesced so that a fast loop does not hammer the database.

A step is written when `min_interval_s` has passed since the last write, and the start and the last step
are always written; a lazy reporter (`eager=False`: a worker's generation job, whose event stream carries
every step and whose end records its last progress) writes neither, only the coalesced steps between.
Status changes go through `core.jobs` and are never coalesced.

A write fails once the job is no longer running, which is how a run learns it was canceled. Writes
are too far apart for a prompt stop. With `events` (core/events.py, what workers use) every step is
published to the job's event stream, and the same round trip reads the job's cancel flag: a canceled
job stops at the next step boundary, and Postgres is not read between writes at all. Without, the
reporter reads the job's status between writes, at most every `check_interval_s`.

A reporter writes through the job's session and commits each write and each read at once: the API
sees progress while the job runs, and the next status read sees a cancel made since.
"""

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from core.db import DB_UNAVAILABLE, commit_without_waiting
from core.errors import first_line
from core.events import JobEvents
from core.jobs import job_status, record_progress
from core.tables import JobStatus

logger = logging.getLogger(__name__)


class JobCanceled(Exception):
    """The job is no longer this attempt's to run: a user canceled it, or it was taken over."""


class _OutageLog:
    """Says once that a running job's writes fail while the database is unreachable, not at every step."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self.last: float | None = None

    def warn(self, job_id: uuid.UUID, error: BaseException) -> None:
        now = time.monotonic()
        if self.last is None or now - self.last >= self.every_s:
            self.last = now
            logger.warning(
                "job %s: the database is unreachable (%s); the run goes on without progress writes",
                job_id,
                first_line(error),
            )


def progress_writer(session: Session) -> Callable[..., bool]:
    """`record_progress` on `session`, committed at once.

    While the database is unreachable the run goes on: the write is skipped (the next one carries the
    progress) and the job counts as still its own, which the write after the outage checks again. A
    training run's metrics of a skipped write are lost with it; its checkpoints are not."""

    outage = _OutageLog()

    def write(job_id: uuid.UUID, attempt: int, progress: dict[str, Any], **training: Any) -> bool:
        try:
            written = record_progress(session, job_id, attempt, progress, **training)
            commit_without_waiting(session)
        except DB_UNAVAILABLE as error:
            session.rollback()
            outage.warn(job_id, error)
            return True
        return written

    return write


def status_reader(session: Session) -> Callable[[uuid.UUID], str | None]:
    """`job_status` on `session`, its transaction ended at once so that the next read is fresh. While
    the database is unreachable, a job reads as still running."""

    outage = _OutageLog()

    def status(job_id: uuid.UUID) -> str | None:
        try:
            current = job_status(session, job_id)
            session.commit()
        except DB_UNAVAILABLE as error:
            session.rollback()
            outage.warn(job_id, error)
            return JobStatus.RUNNING
        return current

    return status


class ProgressReporter:
    def __init__(
        self,
        job_id: uuid.UUID,
        attempt: int,
        total: int,
        min_interval_s: float,
        write: Callable[[uuid.UUID, int, dict[str, Any]], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        check_interval_s: float | None = None,
        status: Callable[[uuid.UUID], str | None] | None = None,
        session: Session | None = None,
        events: JobEvents | None = None,
        eager: bool = True,
    ) -> None:
        """Writes and reads through `session` (committing each), unless `write` and `status` are given;
        with `events`, publishes each step and checks for a cancel there instead of reading `status`.
        `eager=False` (only with `events`): `start` and the last step publish but do not write."""
        if write is None and session is None or status is None and session is None and events is None:
            raise ValueError("a ProgressReporter needs a session, or both write and status (or events)")
        self.events = events
        self.eager = eager or events is None
        self.job_id = job_id
        self.attempt = attempt
        self.total = total
        self.min_interval_s = min_interval_s
        self.write = write or progress_writer(session)
        self.clock = clock
        self.started = clock()
        self.last_write: float | None = None
        self.writes = 0
        self.check_interval_s = check_interval_s
        self.status = status or (status_reader(session) if session is not None else None)
        self.last_check: float | None = None
        self.checks = 0
        self.current: dict[str, Any] = self._snapshot(0, {})
        # Called once the last step is recorded (a worker claims its next job then: workers/next_claim.py).
        self.on_last_step: Callable[[], None] | None = None

    def _snapshot(self, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        elapsed = self.clock() - self.started
        eta = elapsed / step * (self.total - step) if step else None
        return {
            "step": step,
            "total": self.total,
            "fraction": round(step / self.total, 4) if self.total else 1.0,
            "eta_s": round(eta, 2) if eta is not None else None,
            "steps_per_s": round(step / elapsed, 3) if step and elapsed > 0 else None,
            **extra,
        }

    def update(self, step: int, **extra: Any) -> None:
        """Record that `step` of `total` is done; raises JobCanceled if the job was canceled. At the last
        step, then calls `on_last_step`, if set."""
        self.current = self._snapshot(step, extra)
        if self.events is not None and self.events.step(self.current):
            raise JobCanceled(str(self.job_id))
        now = self.clock()
        due = self.last_write is None or now - self.last_write >= self.min_interval_s
        if due or (step >= self.total and self.eager):
            self.flush()
        elif (
            self.events is None
            and self.check_interval_s is not None
            and (self.last_check is None or now - self.last_check >= self.check_interval_s)
        ):
            self.check()
        if step >= self.total and self.on_last_step is not None:
            self.on_last_step()

    def start(self) -> None:
        """Record step 0 (raises JobCanceled if the job was canceled): written, or, when lazy, only the
        cancel flag read, the first write due `min_interval_s` later."""
        if self.eager:
            self.flush()
            return
        self.last_write = self.clock()
        self.check(at_start=True)

    def flush(self) -> None:
        self.last_write = self.last_check = self.clock()
        self.writes += 1
        if not self.write(self.job_id, self.attempt, self.current):
            raise JobCanceled(str(self.job_id))

    def poll_cancel(self) -> None:
        """Raise JobCanceled if the job was canceled, reading its status when a check is due (every
        `check_interval_s`; every call when it is None). For steps that move no progress, such as the
        denoising steps of a training job's sample grid, so that a cancel stops them at the next step."""
        interval = self.check_interval_s
        if interval is None or self.last_check is None or self.clock() - self.last_check >= interval:
            self.check()

    def check(self, at_start: bool = False) -> None:
        """Raise JobCanceled if the job is no longer running; a read, cheaper than a write. `at_start`:
        the check before the first step, which the event stream may answer from the read it made when
        the job started (core/events.py `JobEvents.started`)."""
        self.last_check = self.clock()
        self.checks += 1
        if self.events is not None:
            if self.events.canceled(at_start):
                raise JobCanceled(str(self.job_id))
        elif self.status is not None and self.status(self.job_id) != JobStatus.RUNNING:
            raise JobCanceled(str(self.job_id))


class TrainingReporter(ProgressReporter):
    """Progress of a training job: per optimizer step, with its metrics history and its outputs so far.

    Each step's metrics are kept until the next write, which stores them with the progress (one
    insert per write, not per step). A resumed run starts at `start_step`; its ETA counts only the
    steps it has run itself, and its progress says where it resumed (`resumed_from`).
    """

    def __init__(
        self,
        job_id: uuid.UUID,
        attempt: int,
        total: int,
        min_interval_s: float,
        start_step: int = 0,
        outputs: list[dict[str, Any]] | None = None,
        write: Callable[..., bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        check_interval_s: float | None = None,
        status: Callable[[uuid.UUID], str | None] | None = None,
        session: Session | None = None,
        events: JobEvents | None = None,
    ) -> None:
        self.start_step = start_step
        self.pending_metrics: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = list(outputs or [])
        self.outputs_changed = False
        super().__init__(
            job_id,
            attempt,
            total,
            min_interval_s,
            write=write,
            clock=clock,
            check_interval_s=check_interval_s,
            status=status,
            session=session,
            events=events,
        )
        self.current = self._snapshot(start_step, {})

    def _snapshot(self, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        snapshot = super()._snapshot(step, extra)
        if self.start_step:
            snapshot["resumed_from"] = self.start_step
        done = step - self.start_step
        if done > 0:
            elapsed = self.clock() - self.started
            snapshot["eta_s"] = round(elapsed / done * (self.total - step), 2)
        else:
            snapshot["eta_s"] = None
        return snapshot

    def log_step(self, step: int, *, epoch: int, loss: float, lr: float) -> None:
        """Record one optimizer step: its metrics join the history, and progress moves."""
        self.pending_metrics.append({"step": step, "epoch": epoch, "loss": loss, "lr": lr})
        self.update(step, epoch=epoch, loss=round(loss, 6), lr=lr)

    def add_output(self, output: dict[str, Any]) -> None:
        """List an output on the job now (a sample grid, a snapshot); written with the next progress."""
        self.outputs = [o for o in self.outputs if o["key"] != output["key"]] + [output]
        self.outputs_changed = True
        if self.events is not None:
            self.events.outputs(self.outputs)

    def flush(self) -> None:
        self.last_write = self.last_check = self.clock()
        self.writes += 1
        metrics, self.pending_metrics = self.pending_metrics, []
        outputs = self.outputs if self.outputs_changed else None
        if not self.write(self.job_id, self.attempt, self.current, metrics=metrics, outputs=outputs):
            raise JobCanceled(str(self.job_id))
        self.outputs_changed = False
