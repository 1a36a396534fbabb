"""The reporter's cancel check: a cheap status read between coalesced writes, at most every interval."""

import uuid

import pytest

from core.progress import JobCanceled, ProgressReporter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def reporter(clock: Clock, statuses: list[str], check_interval_s: float | None) -> ProgressReporter:
    writes: list[dict] = []

    def status(job_id: uuid.UUID) -> str:
        statuses.append("read")
        return "canceled" if "cancel" in statuses else "running"

    return ProgressReporter(
        uuid.uuid4(),
        attempt=1,
        total=100,
        min_interval_s=1.0,
        write=lambda job_id, attempt, progress: writes.append(progress) or True,
        clock=clock,
        check_interval_s=check_interval_s,
        status=status,
    )


def test_status_is_read_at_most_every_interval_between_writes() -> None:
    clock, statuses = Clock(), []
    progress = reporter(clock, statuses, check_interval_s=0.1)
    progress.flush()  # a write counts as a check
    for step in range(1, 11):
        clock.now += 0.04
        progress.update(step)
    # 0.4 s of steps: no write is due (1 s), and reads come every 0.1 s at most.
    assert progress.writes == 1
    assert progress.checks == statuses.count("read") == 3


def test_a_cancel_is_seen_at_the_next_check() -> None:
    clock, statuses = Clock(), []
    progress = reporter(clock, statuses, check_interval_s=0.0)
    progress.flush()
    progress.update(1)
    statuses.append("cancel")
    with pytest.raises(JobCanceled):
        progress.update(2)


def test_no_interval_means_no_reads() -> None:
    clock, statuses = Clock(), []
    progress = reporter(clock, statuses, check_interval_s=None)
    progress.flush()
    for step in range(1, 50):
        clock.now += 0.01
        progress.update(step)
    assert statuses == [] and progress.checks == 0
