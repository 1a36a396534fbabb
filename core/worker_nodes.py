"""The fleet's shared view of its workers: one row per worker node in the `workers` table.

Workers write their row (at start, at every job, and on a heartbeat); the API reads the rows for
`/metrics` and for model affinity, since it cannot see a worker's memory itself. A table works alike on
SQLite and Postgres and needs no service beyond the database the jobs already live in. A row is only as
fresh as its `last_seen`: one older than `DIFFQ_WORKER_STALE_S` is a worker that is gone.
"""

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from core.tables import WorkerNode, utcnow


def register_worker(
    session: Session, name: str, device: str, queues: list[str], pid: int, cache_budget_bytes: int | None
) -> None:
    """Write a fresh row for worker `name`, replacing what an earlier process of that name left.
    The caller commits."""
    session.execute(delete(WorkerNode).where(WorkerNode.name == name))
    session.add(
        WorkerNode(
            name=name,
            device=device,
            queues=queues,
            pid=pid,
            resident=[],
            cache_budget_bytes=cache_budget_bytes,
            cache_hits=0,
            cache_misses=0,
            cache_evictions=0,
            cache_load_seconds=0.0,
            jobs_run=0,
            busy_seconds=0.0,
            denoising_steps=0,
            denoising_seconds=0.0,
        )
    )
    session.flush()


def update_worker(session: Session, name: str, **values: Any) -> bool:
    """Update worker `name`'s row and its `last_seen`; False if it has no row (it was removed).
    The caller commits."""
    updated = session.execute(
        update(WorkerNode).where(WorkerNode.name == name).values(last_seen=utcnow(), **values)
    ).rowcount
    return updated == 1


# What `mark_worker_busy` runs, built once: it runs at every claim.
_MARK_BUSY = (
    update(WorkerNode)
    .where(WorkerNode.name == bindparam("worker_name"))
    .values(
        last_seen=bindparam("now", type_=WorkerNode.last_seen.type),
        current_job=bindparam("job_id", type_=WorkerNode.current_job.type),
        current_model=bindparam("model", type_=WorkerNode.current_model.type),
    )
)


def mark_worker_busy(session: Session, name: str, job_id: uuid.UUID, model: str | None) -> None:
    """Mark worker `name` busy with job `job_id` on `model` (`update_worker`, at each claim). The caller
    commits."""
    session.execute(_MARK_BUSY, {"worker_name": name, "now": utcnow(), "job_id": job_id, "model": model})


def record_finished_job(
    session: Session,
    name: str,
    busy_seconds: float,
    steps: int,
    seconds: float,
    jobs: int = 1,
    **values: Any,
) -> bool:
    """Count `jobs` finished jobs (one call) on worker `name`: `busy_seconds` in all, `steps` denoising in
    `seconds`. The caller commits."""
    return update_worker(
        session,
        name,
        jobs_run=WorkerNode.jobs_run + jobs,
        busy_seconds=WorkerNode.busy_seconds + busy_seconds,
        denoising_steps=WorkerNode.denoising_steps + steps,
        denoising_seconds=WorkerNode.denoising_seconds + seconds,
        **values,
    )


def remove_worker(session: Session, name: str) -> None:
    """The caller commits."""
    session.execute(delete(WorkerNode).where(WorkerNode.name == name))


def live_workers(session: Session, stale_s: float) -> list[WorkerNode]:
    """Workers seen in the last `stale_s` seconds, by name."""
    since = utcnow() - timedelta(seconds=stale_s)
    return list(
        session.scalars(select(WorkerNode).where(WorkerNode.last_seen >= since).order_by(WorkerNode.name))
    )


def resident_models(worker: WorkerNode) -> set[str]:
    """The model references worker `worker` has loaded, or is loading for the job it runs now."""
    models = {entry["model"] for entry in worker.resident or []}
    if worker.current_model:
        models.add(worker.current_model)
    return models


def fresh_worker(session: Session, name: str, stale_s: float) -> WorkerNode | None:
    """Worker `name`'s row if it was written in the last `stale_s` seconds (a worker that may be live)."""
    since = utcnow() - timedelta(seconds=stale_s)
    return session.scalars(
        select(WorkerNode).where(WorkerNode.name == name, WorkerNode.last_seen >= since)
    ).one_or_none()
