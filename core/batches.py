"""Batches: many jobs written in one transaction, and what a batch's jobs add up to.

A batch's state lives on its jobs; the `batches` row only groups them. The jobs are written as plain rows
in one statement, not one ORM flush per row: a COPY on Postgres through psycopg (10,000 rows in about
0.2 s, a third of an executemany INSERT), an executemany INSERT elsewhere (SQLite). The broker hears of
them only after the transaction commits. A batch's specs come from
`core/batch_specs.py`; its manifest (every job with its outputs' URLs, as JSON or CSV) is made here.
"""

import csv
import io
import json
import operator
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, func, insert, select
from sqlalchemy.orm import Session

from core.job_types import queue_for
from core.specs import BatchWebhook
from core.storage import Storage
from core.tables import Batch, Job, JobStatus, utcnow


def insert_batch(
    session: Session,
    name: str | None,
    source: dict[str, Any],
    jobs: list[dict[str, Any]],
    owner: str,
    webhook: BatchWebhook | None = None,
    priority: int = 0,
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """Write `owner`'s batch and its jobs (`type`, `model`, `params` each; `queue` and `priority` when
    set, else their type's queue and the batch's `priority`) in the session's transaction.

    A job without a webhook of its own gets the batch webhook's job events, if it lists any. Returns the
    batch id and the job ids in batch order. The caller commits, then wakes the workers.
    """
    now = utcnow()
    batch_id = uuid.uuid4()
    session.execute(
        insert(Batch).values(
            id=batch_id,
            name=name,
            total=len(jobs),
            source=source,
            created_at=now,
            owner=owner,
            webhook=webhook.model_dump(mode="json") if webhook is not None else None,
            priority=priority,
        )
    )
    jobs_webhook = webhook.for_jobs() if webhook is not None else None
    rows = [
        {
            "id": uuid.uuid4(),
            "type": job["type"],
            "model": job["model"],
            "params": job["params"],
            "output_model": job.get("output_model"),
            "overwrite_output_model": job.get("overwrite_output_model", False),
            "webhook": job.get("webhook") or jobs_webhook,
            "queue": job.get("queue") or queue_for(job["type"]),
            "fuse_key": job.get("fuse_key"),
            "priority": job.get("priority", priority),
            "status": JobStatus.QUEUED.value,
            "outputs": [],
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "batch_id": batch_id,
            "batch_index": index,
            "owner": owner,
        }
        for index, job in enumerate(jobs)
    ]
    if rows:
        insert_jobs(session, rows)
    return batch_id, [row["id"] for row in rows]


def insert_jobs(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert `rows` (dicts of `jobs` columns, the same ones in each; JSON columns as Python values) into
    `jobs` in the session's transaction: one COPY on Postgres with psycopg, one executemany INSERT on
    other databases. JSON values are written as SQLAlchemy's `JSON` type writes them (None as JSON
    `null`), so both ways store the same."""
    connection = session.connection()
    if (connection.dialect.name, connection.dialect.driver) != ("postgresql", "psycopg"):
        session.execute(insert(Job), rows)
        return
    table = Job.__table__
    columns = list(rows[0])
    is_json = [isinstance(table.c[name].type, JSON) for name in columns]
    values = operator.itemgetter(*columns)
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor, cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(
                [
                    json.dumps(value) if as_json else value
                    for value, as_json in zip(values(row), is_json, strict=True)
                ]
            )


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


def manifest_entries(session: Session, batch: Batch, storage: Storage, base_url: str) -> list[dict[str, Any]]:
    """One entry per job, in batch order, with its parameters and its outputs' URLs."""
    return [
        {
            "index": job.batch_index,
            "job_id": str(job.id),
            "status": job.status,
            "type": job.type,
            "model": job.model,
            "params": job.params,
            "error": job.error,
            "outputs": [
                output | {"url": storage.url(output["key"], base_url=base_url)}
                for output in job.outputs or []
            ],
        }
        for job in batch_jobs(session, batch.id)
    ]


def manifest(session: Session, batch: Batch, storage: Storage, base_url: str) -> dict[str, Any]:
    """Every job of the batch with its parameters, status, error and outputs; before the batch is done
    (`done` false) the jobs as they are so far."""
    state = batch_state(session, batch, running_limit=0)
    return {
        "batch_id": str(batch.id),
        "name": batch.name,
        "status": state.status,
        "done": state.done,
        "counts": state.counts,
        "jobs": manifest_entries(session, batch, storage, base_url),
    }


CSV_COLUMNS = (
    "index",
    "job_id",
    "status",
    "type",
    "model",
    "output",
    "seed",
    "width",
    "height",
    "url",
    "key",
    "prompt",
    "error",
    "params",
)


def manifest_rows(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CSV rows of manifest entries: one per output, with its own seed and URL and the job's params
    (with that seed) as JSON; a job without outputs gets one row with its status and error."""
    rows = []
    for entry in entries:
        error = entry["error"] or {}
        row = {
            "index": entry["index"],
            "job_id": entry["job_id"],
            "status": entry["status"],
            "type": entry["type"],
            "model": entry["model"],
            "prompt": entry["params"].get("prompt", ""),
            "error": f"{error['code']}: {error['message']}" if error else "",
        }
        for number, output in enumerate(entry["outputs"] or [{}]):
            params = entry["params"] | ({"seed": output["seed"]} if output.get("seed") is not None else {})
            rows.append(
                row
                | {
                    "output": number if output else "",
                    "seed": output.get("seed", entry["params"].get("seed", "")),
                    "width": output.get("width", ""),
                    "height": output.get("height", ""),
                    "url": output.get("url", ""),
                    "key": output.get("key", ""),
                    "params": json.dumps(params, sort_keys=True),
                }
            )
    return rows


def manifest_csv(entries: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(manifest_rows(entries))
    return buffer.getvalue()
