"""Progress bars for jobs and batches, fed by their event streams (`/v1/jobs/{id}/events`,
`/v1/batches/{id}/events`), or by polling the API where it serves none."""

import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from itertools import chain
from types import SimpleNamespace
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from cli.client import FINISHED, Client, NoStream

# A display's text columns, as rich's TextColumn formats them (`task.description`, `task.fields[...]`);
# a terminal shows a bar after the first.
JOB_COLUMNS = (
    "{task.description}",
    "{task.fields[steps]} {task.fields[status]}",
    "{task.fields[times]}",
    "{task.fields[detail]}",
)
BATCH_COLUMNS = ("{task.description}", "{task.fields[detail]}", "{task.fields[times]}")
# How often a line that is not a terminal's repeats a task whose status has not changed, in seconds.
PLAIN_INTERVAL_S = 5.0


class PlainLines:
    """The part of rich's Progress that the watchers use (`add_task`, `update`, `remove_task`, `with`),
    drawn as whole lines for output that is not a terminal (a log, a pipe), where Progress would print
    its last frame once, cut to 80 columns. A task's line is printed at its first update and whenever
    its `status` field changes; other changes at most every `interval_s` seconds; and its last state,
    if not printed yet, when the display closes. A removed task prints nothing more."""

    def __init__(
        self,
        columns: Sequence[str],
        interval_s: float = PLAIN_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.columns = columns
        self.interval_s = interval_s
        self.clock = clock
        self.tasks: dict[TaskID, dict[str, Any]] = {}
        self.printed: dict[TaskID, tuple[str, Any, float]] = {}  # text, status, when
        self.next_id = 0

    def __enter__(self) -> "PlainLines":
        return self

    def __exit__(self, *exc: object) -> None:
        for task in list(self.tasks):
            text = self.text(task)
            if text and text != self.printed.get(task, ("",))[0]:
                self.write(task, text)

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> TaskID:
        task = TaskID(self.next_id)
        self.next_id += 1
        self.tasks[task] = {"description": description, **fields}
        return task

    def update(self, task: TaskID, *, description: str | None = None, **fields: Any) -> None:
        """Set the task's fields (`total`, `completed` and the like are taken and not shown) and print
        its line if due."""
        if description is not None:
            fields["description"] = description
        self.tasks[task].update(fields)
        text = self.text(task)
        if not text:
            return
        if self.due(task, text):
            self.write(task, text)

    def due(self, task: TaskID, text: str) -> bool:
        """Whether the task's line `text` is to be printed now."""
        last = self.printed.get(task)
        if last is None or last[1] != self.tasks[task].get("status"):
            return True
        return text != last[0] and self.clock() - last[2] >= self.interval_s

    def remove_task(self, task: TaskID) -> None:
        self.tasks.pop(task, None)
        self.printed.pop(task, None)

    def text(self, task: TaskID) -> str:
        """The task's line: its columns with their fields, the empty ones left out."""
        fields = self.tasks[task]
        shown = SimpleNamespace(description=fields.get("description", ""), fields=fields)
        parts = [column.format(task=shown).strip() for column in self.columns]
        return " ".join(part for part in parts if part)

    def write(self, task: TaskID, text: str) -> None:
        self.printed[task] = (text, self.tasks[task].get("status"), self.clock())
        print(text, file=sys.stdout, flush=True)


Bars = Progress | PlainLines


def bars(columns: Sequence[str], plain: bool | None = None) -> Bars:
    """A live display of `columns` with a bar on a terminal; `PlainLines` elsewhere (`plain` None: as
    stdout is)."""
    if plain is None:
        console = Console()
        plain = not console.is_terminal or console.is_dumb_terminal
    if plain:
        return PlainLines(columns)
    first, *rest = columns
    return Progress(TextColumn(first), BarColumn(), *(TextColumn(column) for column in rest))


def job_bars(plain: bool | None = None) -> Bars:
    return bars(JOB_COLUMNS, plain)


def show_job(bars: Bars, task: TaskID, job: dict[str, Any]) -> None:
    progress = job.get("progress") or {}
    bars.update(
        task,
        description=f"{job['id'][:8]} {job['type']}",
        total=progress.get("total"),
        completed=progress.get("step", 0),
        steps=f"step {progress.get('step', 0)}/{progress.get('total') or '?'}",
        status=job["status"],
        times=times(job),
        detail=training_detail(progress),
    )


def watch_jobs(client: Client, job_ids: list[str], poll_s: float = 0.2) -> list[dict[str, Any]]:
    """Show one bar per job until all have ended; return the final jobs. One job is followed through
    its event stream; several, or one on an API without streams, by polling."""
    if len(job_ids) == 1:
        try:
            return [stream_job(client, job_ids[0])]
        except NoStream:
            pass
    final: dict[str, dict[str, Any]] = {}
    with job_bars() as bars:
        tasks = {
            job_id: bars.add_task(job_id[:8], total=None, status="queued", steps="", times="", detail="")
            for job_id in job_ids
        }
        while len(final) < len(job_ids):
            for job_id, task in tasks.items():
                if job_id in final:
                    continue
                job = client.job(job_id)
                show_job(bars, task, job)
                if job["status"] in FINISHED:
                    final[job_id] = job
            time.sleep(poll_s)
    return [final[job_id] for job_id in job_ids]


def stream_job(client: Client, job_id: str) -> dict[str, Any]:
    """Show the job's bar from its event stream until its final status; return the job as the API
    then has it. NoStream (before anything is shown) when the API serves no stream."""
    job = client.job(job_id)
    events = client.events(f"/v1/jobs/{job_id}/events")
    first = next(events, None)  # NoStream here means: poll instead
    with job_bars() as bars:
        task = bars.add_task(job_id[:8], total=None, status=job["status"], steps="", times="", detail="")
        show_job(bars, task, job)
        for kind, data in [first] if first else []:
            follow_job_event(job, kind, data)
        show_job(bars, task, job)
        try:
            for kind, data in events:
                follow_job_event(job, kind, data)
                show_job(bars, task, job)
        except NoStream:
            pass  # the stream broke for good: the API's answer below is the job's state
        job = client.job(job_id)
        show_job(bars, task, job)
    return job


def follow_job_event(job: dict[str, Any], kind: str, data: dict[str, Any]) -> None:
    """Update a job (as `GET /v1/jobs/{id}` gives it) with one of its events."""
    if kind == "status":
        job["status"] = data["status"]
        if data["status"] == "running" and not job.get("started_at"):
            job["started_at"] = datetime.fromtimestamp(data["ts"], UTC).isoformat()
        if data.get("progress"):
            job["progress"] = data["progress"]
    elif kind == "progress":
        job["status"] = "running"
        job["progress"] = data


def watch_batch(client: Client, batch_id: str, poll_s: float = 0.5) -> dict[str, Any]:
    """Show the batch's overall bar and one line per running job until every job has ended: from the
    batch's event stream, or by polling where the API serves none."""
    try:
        return stream_batch(client, batch_id)
    except NoStream:
        return poll_batch(client, batch_id, poll_s)


def batch_bars(plain: bool | None = None) -> Bars:
    return bars(BATCH_COLUMNS, plain)


class BatchLines:
    """The overall bar of a batch and one line per running job, kept from the batch's events or polls: a
    job's line goes once the job has ended, whatever its final status, and stays gone whatever events
    about it come late (a canceled job's last step is published after its cancel)."""

    def __init__(self, bars: Bars, batch_id: str) -> None:
        self.bars = bars
        self.started = time.monotonic()
        self.overall = bars.add_task(f"batch {batch_id[:8]}", total=None, detail="", times="", status="")
        self.lines: dict[str, TaskID] = {}
        self.jobs: dict[str, dict[str, Any]] = {}  # the running jobs, as far as the events tell
        self.ended_ids: set[str] = set()

    def counts(self, counts: dict[str, int], fraction: float) -> None:
        detail = " ".join(f"{count} {name}" for name, count in counts.items() if count)
        elapsed = f"elapsed {clock(time.monotonic() - self.started)}"
        # The counts are the batch's status: a line that is not a terminal's is printed when they change.
        self.bars.update(
            self.overall, total=1.0, completed=fraction, detail=detail, times=elapsed, status=detail
        )

    def running(self, job: dict[str, Any]) -> None:
        """Show (or update) a running job: `id`, `batch_index`, `progress`, `worker`, `started_at`, any
        of them but `id` missing or None."""
        progress = job.get("progress") or {}
        if job["id"] not in self.lines:
            index = f"#{job['batch_index']} " if job.get("batch_index") is not None else ""
            description = f"  {index}{job['id'][:8]}"
            self.lines[job["id"]] = self.bars.add_task(
                description, total=None, detail="", times="", status="running"
            )
        steps = f"step {progress.get('step', 0)}/{progress.get('total') or '?'}"
        worker = f" on {job['worker']}" if job.get("worker") else ""
        self.bars.update(
            self.lines[job["id"]],
            total=progress.get("total"),
            completed=progress.get("step", 0),
            detail=steps + worker,
            times=times(job),
        )

    def ended(self, job_id: str, status: str | None = None) -> None:
        """Drop the line of a job that has ended (`status`: any but running; None: not known). Lines that
        are not a terminal's say the end first (`#6 8e1225d0 canceled`)."""
        self.jobs.pop(job_id, None)
        self.ended_ids.add(job_id)
        if job_id in self.lines:
            task = self.lines.pop(job_id)
            ended = status or "ended"
            self.bars.update(task, detail=ended, times="", status=ended)
            self.bars.remove_task(task)

    def follow(self, kind: str, data: dict[str, Any]) -> None:
        """Update the lines with one event of the batch's stream (`counts`, `job` or `progress`)."""
        if kind == "counts":
            self.counts(data["counts"], data["progress"]["fraction"])
            return
        job_id = data.get("job_id")
        if job_id is None:
            return
        if kind == "job" and data.get("status") != "running":
            self.ended(job_id, data.get("status"))
            return
        if kind == "job":
            self.ended_ids.discard(job_id)  # running (again: a requeued job runs anew)
        elif job_id in self.ended_ids:
            return  # a step published after the job ended
        job = self.jobs.setdefault(
            job_id, {"id": job_id, "batch_index": data.get("batch_index"), "started_at": None}
        )
        if kind == "job":
            job["worker"] = data.get("worker")
            ts = data.get("ts")
            job["started_at"] = datetime.fromtimestamp(ts, UTC).isoformat() if ts else None
        else:
            job["progress"] = data
        self.running(job)

    def sync(self, batch: dict[str, Any]) -> None:
        """Show the batch as `GET /v1/batches/{id}` gives it: its counts, and its running jobs only."""
        self.counts(batch["counts"], batch["progress"]["fraction"])
        running = {job["id"]: job for job in batch["running"]}
        for job_id in [job_id for job_id in self.lines if job_id not in running]:
            self.ended(job_id)
        for job in running.values():
            self.ended_ids.discard(job["id"])
            self.jobs[job["id"]] = dict(job)
            self.running(self.jobs[job["id"]])


def stream_batch(client: Client, batch_id: str) -> dict[str, Any]:
    batch = client.batch(batch_id)
    events = client.events(f"/v1/batches/{batch_id}/events")
    first = next(events, None)  # NoStream here means: poll instead
    with batch_bars() as bars:
        lines = BatchLines(bars, batch_id)
        lines.sync(batch)
        try:
            for kind, data in chain([first] if first else [], events):
                lines.follow(kind, data)
        except NoStream:
            pass
        # The final state as the API has it: no line is left for a job whose end no event told.
        batch = client.batch(batch_id)
        lines.sync(batch)
    return batch


def poll_batch(client: Client, batch_id: str, poll_s: float) -> dict[str, Any]:
    """`watch_batch` by polling `GET /v1/batches/{id}`."""
    with batch_bars() as bars:
        lines = BatchLines(bars, batch_id)
        while True:
            batch = client.batch(batch_id)
            lines.sync(batch)
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
