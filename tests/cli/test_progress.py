"""How `diffq watch`, `diffq batch --watch` and the quickstart draw progress: a batch's lines kept from
its events and polls, and whole lines where stdout is not a terminal. The drawing is fed the jobs and
events the API gives; no server is needed."""

import time

import pytest
from rich.progress import Progress

from cli.progress import BatchLines, PlainLines, batch_bars, job_bars, show_job

BATCH_ID = "8e1225d0-0000-0000-0000-000000000000"


def batch_lines() -> tuple[Progress, BatchLines]:
    """A terminal's display (not started: nothing is drawn) and the batch's lines on it."""
    bars = batch_bars(plain=False)
    assert isinstance(bars, Progress)
    return bars, BatchLines(bars, BATCH_ID)


def shown(bars: Progress) -> list[str]:
    """Each line's description and detail as drawn."""
    return [f"{task.description} {task.fields['detail']} {task.fields['times']}" for task in bars.tasks]


def batch(jobs: list[dict], **counts: int) -> dict:
    done = not jobs and not counts.get("queued")
    return {"counts": counts, "running": jobs, "progress": {"fraction": 1.0 if done else 0.5}, "done": done}


def test_a_job_canceled_mid_run_leaves_no_running_line_even_if_a_step_comes_after() -> None:
    """A batch canceled while jobs run: the cancel's `job` event comes first, then the worker's last
    `progress` event; neither may leave a `step 9/101 on None` line."""
    bars, lines = batch_lines()
    now = time.time()
    for index, job_id in enumerate(["a" * 8, "b" * 8, "c" * 8]):
        lines.follow("job", {"job_id": job_id, "batch_index": index, "status": "running", "ts": now})
        lines.follow("progress", {"job_id": job_id, "batch_index": index, "step": 9, "total": 101})
    assert len(bars.tasks) == 4 and all(" on " not in line for line in shown(bars))
    for status in ("canceled", "failed", "succeeded"):
        job_id = {"canceled": "a" * 8, "failed": "b" * 8, "succeeded": "c" * 8}[status]
        lines.follow("job", {"job_id": job_id, "batch_index": 0, "status": status})
        lines.follow("progress", {"job_id": job_id, "batch_index": 0, "step": 10, "total": 101})
    assert len(bars.tasks) == 1 and shown(bars)[0].startswith("batch 8e1225d0")
    assert not any("None" in line for line in shown(bars))


def test_a_line_names_its_worker_only_when_known() -> None:
    bars, lines = batch_lines()
    lines.follow("job", {"job_id": "d" * 8, "batch_index": None, "status": "running", "worker": None})
    lines.follow("job", {"job_id": "e" * 8, "batch_index": 4, "status": "running", "worker": "gpu0@h"})
    assert shown(bars)[1:] == [f"  {'d' * 8} step 0/? ", f"  #4 {'e' * 8} step 0/? on gpu0@h "]


def test_the_final_state_drops_lines_no_event_ended() -> None:
    """The stream broke (or was never read) before a job's end: the batch as the API has it at the end
    is what stays drawn."""
    bars, lines = batch_lines()
    lines.sync(batch([{"id": "f" * 8, "batch_index": 6, "worker": None, "started_at": None}], running=1))
    assert [line.split()[0] for line in shown(bars)[1:]] == ["#6"]
    lines.sync(batch([], succeeded=5, canceled=3))
    assert shown(bars) == ["batch 8e1225d0 5 succeeded 3 canceled elapsed 0:00"]


class Clock:
    """A monotonic clock the test moves, in seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def training_job(status: str, step: int, loss: float | None = None) -> dict:
    progress = {"step": step, "total": 640, "eta_s": 120.0}
    if loss is not None:
        progress |= {"epoch": step // 16 - 1, "loss": loss}
    started = "2024-01-01T00:00:00+00:00" if status != "queued" else None
    finished = "2024-01-01T00:02:03+00:00" if status == "succeeded" else None
    return {
        "id": "3f2a1b4c" + "0" * 28,
        "type": "train_unconditional",
        "status": status,
        "progress": progress if step else None,
        "started_at": started,
        "finished_at": finished,
    }


def test_plain_lines_are_whole_lines_per_status_change_and_every_few_seconds(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Not a terminal (a log): the quickstart's training job as whole lines, not a last frame cut to 80
    columns (`succeed… elapsed 3… epoch 40 loss 0.03…`)."""
    clock = Clock()
    with PlainLines(job_bars(plain=True).columns, interval_s=5.0, clock=clock) as bars:
        task = bars.add_task("3f2a1b4c", total=None, status="queued", steps="", times="", detail="")
        show_job(bars, task, training_job("queued", 0))
        show_job(bars, task, training_job("running", 16, 0.5))  # a status change: printed at once
        for step in range(17, 40):  # within 5 s: not printed
            clock.now += 0.1
            show_job(bars, task, training_job("running", step, 0.4))
        clock.now += 5
        show_job(bars, task, training_job("running", 48, 0.2))
        clock.now += 1
        show_job(bars, task, training_job("running", 639, 0.0312))  # not due: the last state follows
        show_job(bars, task, training_job("succeeded", 640, 0.0312))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "3f2a1b4c train_unconditional step 0/? queued"
    assert lines[1].startswith("3f2a1b4c train_unconditional step 16/640 running elapsed ")
    assert lines[1].endswith(" remaining 2:00 epoch 1 loss 0.5000")
    assert " step 48/640 running " in lines[2]
    assert lines[3] == (
        "3f2a1b4c train_unconditional step 640/640 succeeded elapsed 2:03 epoch 40 loss 0.0312"
    )
    assert len(lines) == 4 and not any("…" in line for line in lines)


def test_plain_lines_of_a_batch_say_each_end(capsys: pytest.CaptureFixture[str]) -> None:
    """Not a terminal: a batch's counts at each change, a job's line when it starts and when it ends,
    and nothing of it after its end."""
    with batch_bars(plain=True) as bars:
        lines = BatchLines(bars, BATCH_ID)
        lines.follow("counts", {"counts": {"running": 1, "queued": 7}, "progress": {"fraction": 0.0}})
        lines.follow("job", {"job_id": "a" * 8, "batch_index": 6, "status": "running", "worker": "w@h"})
        lines.follow("job", {"job_id": "a" * 8, "batch_index": 6, "status": "canceled"})
        lines.follow("progress", {"job_id": "a" * 8, "batch_index": 6, "step": 9, "total": 101})
        lines.sync({"counts": {"canceled": 8}, "running": [], "progress": {"fraction": 1.0}})
    printed = [line.split(" elapsed ")[0] for line in capsys.readouterr().out.splitlines()]
    assert printed == [
        "batch 8e1225d0 1 running 7 queued",
        f"#6 {'a' * 8} step 0/? on w@h",
        f"#6 {'a' * 8} canceled",
        "batch 8e1225d0 8 canceled",
    ]


def test_a_display_is_plain_lines_where_stdout_is_not_a_terminal() -> None:
    """pytest captures stdout: not a terminal, as a log or a pipe is not."""
    assert isinstance(job_bars(), PlainLines) and isinstance(batch_bars(), PlainLines)
    assert isinstance(job_bars(plain=False), Progress)
