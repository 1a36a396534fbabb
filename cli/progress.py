"""Progress bars for jobs, fed by polling the API."""

import time
from typing import Any

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from cli.client import FINISHED, Client


def watch_jobs(client: Client, job_ids: list[str], poll_s: float = 0.2) -> list[dict[str, Any]]:
    """Show one bar per job until all have ended; return the final jobs."""
    final: dict[str, dict[str, Any]] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.fields[status]}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[detail]}"),
    ) as bars:
        tasks = {
            job_id: bars.add_task(job_id[:8], total=None, status="queued", detail="") for job_id in job_ids
        }
        while len(final) < len(job_ids):
            for job_id, task in tasks.items():
                if job_id in final:
                    continue
                job = client.job(job_id)
                progress = job.get("progress") or {}
                description = f"{job_id[:8]} {job['type']}"
                bars.update(
                    task,
                    description=description,
                    total=progress.get("total"),
                    completed=progress.get("step", 0),
                    status=job["status"],
                    detail=training_detail(progress),
                )
                if job["status"] in FINISHED:
                    final[job_id] = job
            time.sleep(poll_s)
    return [final[job_id] for job_id in job_ids]


def watch_batch(client: Client, batch_id: str, poll_s: float = 0.5) -> dict[str, Any]:
    """Show the batch's overall bar and one line per running job until every job has ended."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeRemainingColumn(),
    ) as bars:
        overall = bars.add_task(f"batch {batch_id[:8]}", total=None, detail="")
        lines: dict[str, TaskID] = {}
        while True:
            batch = client.batch(batch_id)
            counts = batch["counts"]
            detail = " ".join(f"{count} {name}" for name, count in counts.items() if count)
            bars.update(overall, total=1.0, completed=batch["progress"]["fraction"], detail=detail)
            running = {job["id"]: job for job in batch["running"]}
            for job_id in [job_id for job_id in lines if job_id not in running]:
                bars.remove_task(lines.pop(job_id))
            for job_id, job in running.items():
                progress = job.get("progress") or {}
                if job_id not in lines:
                    lines[job_id] = bars.add_task(
                        f"  #{job['batch_index']} {job_id[:8]}", total=None, detail=""
                    )
                bars.update(
                    lines[job_id],
                    total=progress.get("total"),
                    completed=progress.get("step", 0),
                    detail=f"{progress.get('step', 0)}/{progress.get('total', '?')} on {job.get('worker')}",
                )
            if batch["done"]:
                return batch
            time.sleep(poll_s)


def training_detail(progress: dict[str, Any]) -> str:
    """The epoch and loss of a training job's last step; empty for other jobs."""
    if progress.get("loss") is None:
        return ""
    return f"epoch {progress.get('epoch', 0) + 1} loss {progress['loss']:.4f}"
