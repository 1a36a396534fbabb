"""Batches: many jobs written in one transaction, and what a batch's jobs add up to.

A batch's state lives on its jobs; the `batches` row only groups them. The jobs are inserted with one
executemany INSERT (SQLAlchemy's insertmanyvalues: a few statements of many rows each), not one ORM
flush per row, and handed to the broker only after the transaction commits.
"""

import itertools
import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from core.tables import Batch, Job, JobStatus, utcnow

# A JSON Lines line with this key is a whole job spec; any other line is the params of one.
SPEC_KEY = "params"


def sweep_size(sweep: dict[str, list[Any]]) -> int:
    return math.prod(len(values) for values in sweep.values())


def expand_sweep(template: dict[str, Any], sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The job specs of a template and a sweep: one per combination of the sweep's values.

    `sweep` maps a params field to the values it takes; the combinations come in the order of
    `itertools.product` over the keys as given, so the last key varies fastest: a sweep of
    `{"prompt": [a, b], "seed": [1, 2]}` gives (a, 1), (a, 2), (b, 1), (b, 2). A swept field replaces the
    template's value.
    """
    keys = list(sweep)
    specs = []
    for values in itertools.product(*(sweep[key] for key in keys)):
        params = dict(template.get("params") or {}) | dict(zip(keys, values, strict=True))
        specs.append({**template, "params": params})
    return specs


@dataclass
class JsonlLine:
    number: int
    spec: dict[str, Any] | None = None
    error: str | None = None


def parse_jsonl(text: str, defaults: dict[str, Any]) -> list[JsonlLine]:
    """Job specs from JSON Lines, one JSON object a line; blank lines are skipped.

    A line with a "params" key is a job spec (`{"type": ..., "model": ..., "params": {...}}`) whose
    missing `type` and `model` come from `defaults`; any other line is the params of a job of the
    default type and model (`{"prompt": "a cat", "seed": 1}`). Specs are validated later, per line.
    """
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            lines.append(JsonlLine(number, error=f"not JSON: {error}"))
            continue
        if not isinstance(value, dict):
            lines.append(JsonlLine(number, error=f"a line must be a JSON object, got {type(value).__name__}"))
            continue
        if SPEC_KEY in value:
            spec = {key: val for key, val in defaults.items() if val is not None} | value
        else:
            spec = {key: val for key, val in defaults.items() if val is not None} | {"params": value}
        lines.append(JsonlLine(number, spec=spec))
    return lines


def insert_batch(
    session: Session, name: str | None, source: dict[str, Any], jobs: list[dict[str, Any]]
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """Write a batch and its jobs (`type`, `model`, `params` each) in the session's transaction.

    Returns the batch id and the job ids in batch order. The caller commits, then enqueues the jobs.
    """
    now = utcnow()
    batch_id = uuid.uuid4()
    session.execute(
        insert(Batch).values(id=batch_id, name=name, total=len(jobs), source=source, created_at=now)
    )
    rows = [
        {
            "id": uuid.uuid4(),
            "type": job["type"],
            "model": job["model"],
            "params": job["params"],
            "output_model": job.get("output_model"),
            "overwrite_output_model": job.get("overwrite_output_model", False),
            "status": JobStatus.QUEUED,
            "outputs": [],
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "batch_id": batch_id,
            "batch_index": index,
        }
        for index, job in enumerate(jobs)
    ]
    if rows:
        session.execute(insert(Job), rows)
    return batch_id, [row["id"] for row in rows]


@dataclass
class BatchState:
    """What a batch's jobs add up to."""

    total: int
    counts: dict[str, int]
    running: list[Job] = field(default_factory=list)  # the first ones, in batch order
    running_fractions: float = 0.0  # the progress of all running jobs, added up

    @property
    def finished(self) -> int:
        return sum(self.counts[status] for status in JobStatus.FINISHED)

    @property
    def done(self) -> bool:
        return self.finished == self.total

    @property
    def fraction(self) -> float:
        """Finished jobs count whole, running ones by their progress, queued ones not at all."""
        if not self.total:
            return 1.0
        return round((self.finished + self.running_fractions) / self.total, 4)

    @property
    def status(self) -> str:
        """`queued` until a job starts, `running` until all have finished, then `succeeded` if all did,
        `failed` if any failed, else `canceled`."""
        if not self.done:
            return JobStatus.QUEUED if self.counts[JobStatus.QUEUED] == self.total else JobStatus.RUNNING
        if self.counts[JobStatus.SUCCEEDED] == self.total:
            return JobStatus.SUCCEEDED
        return JobStatus.FAILED if self.counts[JobStatus.FAILED] else JobStatus.CANCELED


def batch_state(session: Session, batch: Batch, running_limit: int = 100) -> BatchState:
    counts = dict.fromkeys(JobStatus.ALL, 0)
    for status, count in session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch.id).group_by(Job.status)
    ):
        counts[status] = count
    is_running = (Job.batch_id == batch.id, Job.status == JobStatus.RUNNING)
    running = session.scalars(select(Job).where(*is_running).order_by(Job.batch_index).limit(running_limit))
    progresses = session.scalars(select(Job.progress).where(*is_running))
    fractions = sum((progress or {}).get("fraction", 0.0) for progress in progresses)
    return BatchState(total=batch.total, counts=counts, running=list(running), running_fractions=fractions)


def batch_jobs(session: Session, batch_id: uuid.UUID) -> list[Job]:
    """Every job of a batch, in batch order."""
    return list(session.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.batch_index)))
