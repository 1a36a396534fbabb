"""How `diffq watch` and `diffq batch --watch` draw a batch's progress: the lines kept from its events
and polls. The drawing is fed the events a real batch stream carries; no server is needed."""

import io
import time

from rich.console import Console
from rich.progress import Progress

from cli.progress import BatchLines, batch_bars


def batch_lines() -> tuple[Progress, BatchLines, io.StringIO]:
    out = io.StringIO()
    bars = batch_bars()
    bars.live.console = Console(file=out, width=200, force_terminal=False)
    return bars, BatchLines(bars, "8e1225d0-0000-0000-0000-000000000000"), out


def shown(bars: Progress) -> list[str]:
    """Each line's description and detail as drawn."""
    return [f"{task.description} {task.fields['detail']} {task.fields['times']}" for task in bars.tasks]


def batch(jobs: list[dict], **counts: int) -> dict:
    done = not jobs and not counts.get("queued")
    return {"counts": counts, "running": jobs, "progress": {"fraction": 1.0 if done else 0.5}, "done": done}


def test_a_job_canceled_mid_run_leaves_no_running_line_even_if_a_step_comes_after() -> None:
    """A batch canceled while jobs run: the cancel's `job` event comes first, then the worker's last
    `progress` event; neither may leave a `step 9/101 on None` line."""
    bars, lines, _ = batch_lines()
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
    bars, lines, _ = batch_lines()
    lines.follow("job", {"job_id": "d" * 8, "batch_index": None, "status": "running", "worker": None})
    lines.follow("job", {"job_id": "e" * 8, "batch_index": 4, "status": "running", "worker": "gpu0@h"})
    assert shown(bars)[1:] == [f"  {'d' * 8} step 0/? ", f"  #4 {'e' * 8} step 0/? on gpu0@h "]


def test_the_final_state_drops_lines_no_event_ended() -> None:
    """The stream broke (or was never read) before a job's end: the batch as the API has it at the end
    is what stays drawn."""
    bars, lines, _ = batch_lines()
    lines.sync(batch([{"id": "f" * 8, "batch_index": 6, "worker": None, "started_at": None}], running=1))
    assert [line.split()[0] for line in shown(bars)[1:]] == ["#6"]
    lines.sync(batch([], succeeded=5, canceled=3))
    assert shown(bars) == ["batch 8e1225d0 5 succeeded 3 canceled elapsed 0:00"]
