"""Progress bars for jobs and batches, fed by polling the API."""

import time
from datetime import UTC, datetime
from typing import Any

from rich.progress import BarColumn, Progress, TaskID, TextColumn

from cli.client import FINISHED, Client


def watch_jobs(client: Client, job_ids: list[str], poll_s: float = 0.2) -> list[dict[str, Any]]:
    """Show one bar per job until all have ended; return the final jobs."""
    final: dict[str, dict[str, Any]] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[steps]} {task.fields[status]}"),
        TextColumn("{task.fields[times]}"),
        TextColumn("{task.fields[detail]}"),
    ) as bars:
        tasks = {
            job_id: bars.add_task(job_id[:8], total=None, status="queued", steps="", times="", detail="")
            for job_id in job_ids
        }
        while len(final) < len(job_ids):
            for job_id, task in tasks.items():
                if job_id in final:
                    continue
                job = client.job(job_id)
                progress = job.get("progress") or {}
                bars.update(
                    task,
                    description=f"{job_id[:8]} {job['type']}",
                    total=progress.get("total"),
                    completed=progress.get("step", 0),
                    steps=f"step {progress.get('step', 0)}/{progress.get('total') or '?'}",
                    status=job["status"],
                    times=times(job),
                    detail=training_detail(progress),
                )
                if job["status"] in FINISHED:
                    final[job_id] = job
            time.sleep(poll_s)
    return [final[job_id] for job_id in job_ids]


def watch_batch(client: Client, batch_id: str, poll_s: float = 0.5) -> dict[str, Any]:
    """Show the batch's overall bar and one line per running job until every job has ended."""
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TextColumn("{task.fields[times]}"),
    ) as bars:
        overall = bars.add_task(f"batch {batch_id[:8]}", total=None, detail="", times="")
        lines: dict[str, TaskID] = {}
        while True:
            batch = client.batch(batch_id)
            counts = batch["counts"]
            detail = " ".join(f"{count} {name}" for name, count in counts.items() if count)
            fraction = batch["progress"]["fraction"]
            elapsed = time.monotonic() - started
            bars.update(
                overall,
                total=1.0,
                completed=fraction,
                detail=detail,
                times=f"elapsed {clock(elapsed)}",
            )
            running = {job["id"]: job for job in batch["running"]}
            for job_id in [job_id for job_id in lines if job_id not in running]:
                bars.remove_task(lines.pop(job_id))
            for job_id, job in running.items():
                progress = job.get("progress") or {}
                if job_id not in lines:
                    lines[job_id] = bars.add_task(
                        f"  #{job['batch_index']} {job_id[:8]}", total=None, detail="", times=""
                    )
                bars.update(
                    lines[job_id],
                    total=progress.get("total"),
                    completed=progress.get("step", 0),
                    detail=f"step {progress.get('step', 0)}/{progress.get('total') or '?'} "
                    f"on {job.get('worker')}",
                    times=times(job),
                )
            if batch["done"]:
                return batch
            time.sleep(poll_s)


def clock(seconds: float | None) -> str:
    """Seconds as h:mm:ss or m:ss; '?' when unknown."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def times(job: dict[str, Any]) -> str:
    """'elapsed m:ss remaining m:ss' of a job since it started (the remaining time from its progress)."""
    if not job.get("started_at"):
        return ""
    started = datetime.fromisoformat(job["started_at"])
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    end = datetime.fromisoformat(job["finished_at"]) if job.get("finished_at") else datetime.now(UTC)
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    text = f"elapsed {clock((end - started).total_seconds())}"
    if job.get("status", "running") == "running":  # a batch lists its running jobs without a status
        text += f" remaining {clock((job.get('progress') or {}).get('eta_s'))}"
    return text


def training_detail(progress: dict[str, Any]) -> str:
    """The epoch and loss of a training job's last step; empty for other jobs."""
    if progress.get("loss") is None:
        return ""
    return f"epoch {progress.get('epoch', 0) + 1} loss {progress['loss']:.4f}"
