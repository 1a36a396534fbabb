"""This worker as a member of the fleet: its device label, and its row in the `workers` table.

Celery signals tie it in. `celeryd_init` (in the main process) learns the node name and queues, and hands
back the jobs that a dead process of the same name still held; `worker_process_init` (in the pool
process, which runs the jobs and holds the pipeline cache) writes the row, hands back what a dead pool
process left running, and starts a heartbeat thread and the idle poll (workers/wakeup.py);
`worker_process_shutdown` waits for the finisher (workers/finisher.py) and removes the row. A claim marks
the worker busy with the job's model in its own transaction (`mark_busy`); after the call, `record_jobs`
writes the cache's state and the jobs' denoising rate. The heartbeat thread writes on a session of its own.
"""

import logging
import os
import uuid
from dataclasses import dataclass, field
from functools import lru_cache

from celery.signals import celeryd_init, worker_process_init, worker_process_shutdown
from sqlalchemy import case
from sqlalchemy.orm import Session

from core.config import get_settings
from core.db import DB_UNAVAILABLE, commit_without_waiting, db_session
from core.errors import first_line
from core.jobs import hand_back
from core.scheduling import Claimer, serves_training
from core.tables import WorkerNode
from core.worker_nodes import (
    fresh_worker,
    mark_worker_busy,
    record_finished_job,
    register_worker,
    remove_worker,
    update_worker,
)
from workers.heartbeat import Heartbeat
from workers.job_run import JobRun

logger = logging.getLogger(__name__)


@dataclass
class Node:
    name: str | None = None
    queues: list[str] = field(default_factory=list)
    heartbeat: Heartbeat | None = None


NODE = Node()


@lru_cache
def device_label() -> str:
    """What jobs record as their device: `DIFFQ_DEVICE_LABEL`, else e.g. "cuda:0 (NVIDIA L4)" or "cpu"."""
    settings = get_settings()
    if settings.device_label:
        return settings.device_label
    import torch

    from workers.pipelines import device_and_dtype

    try:
        device, _dtype = device_and_dtype()
    except ValueError:  # a bad DIFFQ_DEVICE; the job's run reports it
        return settings.device
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


def claimer(only: uuid.UUID | None = None) -> Claimer:
    """This worker as the claim sees it (core/scheduling.py): its queues and the models it has loaded.
    Outside a worker (a task run in-process), one that runs only the job `only`."""
    from workers.pipelines import get_cache

    settings = get_settings()
    models = tuple(tag for tag, _bytes in get_cache().stats().resident) if NODE.name else ()
    return Claimer(
        worker=NODE.name or "worker",
        queues=tuple(NODE.queues),
        models=models,
        trains=serves_training(NODE.queues, NODE.name, settings) if NODE.name else True,
        device=device_label(),
        only=only,
    )


@celeryd_init.connect
def _learn_node(sender: str, options: dict, **_: object) -> None:
    NODE.name = sender
    queues = options.get("queues") or [get_settings().queue]
    NODE.queues = queues.split(",") if isinstance(queues, str) else list(queues)
    hand_back_at_start(sender)


def name_in_use(name: str) -> str | None:
    """Why a worker may not start under `name`: another worker of that name runs on this host; None if
    none does.

    A worker of that name runs if its row in the `workers` table is fresh (written in the last
    `DIFFQ_WORKER_STALE_S`) and the process that wrote it (its pool process, `workers.pid`) is still
    alive here. So a worker restarted after a crash (its processes gone, its row still fresh) starts at
    once and hands back the jobs its name held (`hand_back_at_start`), and one started after a clean stop
    (its row removed) too; a second `diffq worker` next to a live one, under the default name
    `diffq@%h`, is refused instead of taking the live one's job away. A name shared across hosts can't
    be told apart by its pid: names must be unique in the fleet (`%h` makes them so per host). A dead
    worker's pid reused by another process meanwhile delays the restart until the row is stale.
    """
    settings = get_settings()
    with db_session() as session:
        row = fresh_worker(session, name, settings.worker_stale_s)
        pid = row.pid if row is not None else None
    if pid is None or pid == os.getpid() or not _pid_alive(pid):
        return None
    return (
        f"a worker named {name} is already running (process {pid}); pass --name to start another next "
        "to it (e.g. --name w2@%h), or stop it first"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def hand_back_at_start(name: str) -> None:
    """Requeue the jobs a process of this name held when it died: this worker, restarted under its name,
    knows they lost their worker, so they need not wait for their leases to run out. Nothing is handed
    back while a live worker holds the name (`name_in_use`; `diffq worker` refuses to start then): its
    jobs are its own."""
    try:
        if problem := name_in_use(name):
            logger.error("%s; not handing back its jobs", problem)
            return
        with db_session() as session:
            handed = hand_back(session, name)
    except Exception:  # their leases run out instead
        logger.exception("could not hand back the jobs %s held before it restarted", name)
        return
    for job_id, status in handed:
        logger.warning("%s starts again: job %s that it held is %s", name, job_id, status)


@worker_process_init.connect
def _join_fleet(**_: object) -> None:
    if NODE.name is None:
        return
    try:
        with db_session() as session:
            _register(session)
    except Exception:  # the heartbeat writes the row again; the worker works regardless
        logger.exception("could not add worker %s to the workers table", NODE.name)
    interval = get_settings().worker_heartbeat_s
    NODE.heartbeat = Heartbeat(
        _heartbeat,
        interval,
        name="diffq-fleet-heartbeat",
        failure=f"worker heartbeat failed; trying again in {interval}s",
    ).start()
    from workers.wakeup import IDLE_POLL

    IDLE_POLL.start(NODE.name, claimer)
    # A pool process that starts after the first is a replacement: the one before died, maybe while its
    # finisher was storing a job's outputs between tasks, when no task failed to hand that job back.
    hand_back_at_start(NODE.name)


@worker_process_shutdown.connect
def _leave_fleet(**_: object) -> None:
    if NODE.name is None:
        return
    from workers.finisher import FINISHER

    FINISHER.drain()  # the jobs whose outputs are being stored are recorded first
    if NODE.heartbeat is not None:
        NODE.heartbeat.stop()
    from workers.wakeup import IDLE_POLL

    IDLE_POLL.stop()
    try:
        with db_session() as session:
            remove_worker(session, NODE.name)
    except Exception:
        logger.exception("could not remove worker %s from the workers table", NODE.name)


def _register(session: Session) -> None:
    from workers.pipelines import get_cache

    assert NODE.name is not None
    register_worker(
        session,
        NODE.name,
        device_label(),
        NODE.queues,
        os.getpid(),
        cache_budget_bytes=get_cache().budget_bytes,
    )


def _heartbeat() -> None:
    with db_session() as session:  # the heartbeat's thread has a session of its own
        if not update_worker(session, NODE.name):
            _register(session)  # someone removed the row: write it again


def mark_busy(session: Session, job_id: uuid.UUID, model: str | None) -> None:
    """Mark this worker busy with job `job_id` (the lead of its call) on `model`, in the caller's
    transaction (the claim's: one commit for both). Nothing outside a worker (a task run in-process)."""
    if NODE.name is not None:
        mark_worker_busy(session, NODE.name, job_id, model)


def record_jobs(session: Session, runs: list[JobRun], busy_seconds: float) -> None:
    """Count the jobs of one call, each job's denoising steps, and the call's time once: a fused call's
    steps per second are job-steps, what the worker got done. Clears the busy mark unless a later call
    has set its own (calls are recorded after the next one started, workers/finisher.py). Committed at
    once; best effort."""
    from workers.pipelines import get_cache

    if NODE.name is None:
        return
    stats = get_cache().stats()
    run = runs[0]
    progress = run.reporter.current if run.reporter else {}
    rate = progress.get("steps_per_s")
    steps = sum((r.reporter.current.get("step") or 0) for r in runs if r.reporter) if rate else 0
    own = WorkerNode.current_job == run.job_id
    try:
        record_finished_job(
            session,
            NODE.name,
            busy_seconds=busy_seconds,
            steps=steps,
            seconds=(progress.get("step") or 0) / rate if rate else 0.0,
            jobs=len(runs),
            current_job=case((own, None), else_=WorkerNode.current_job),
            current_model=case((own, None), else_=WorkerNode.current_model),
            resident=[{"model": tag, "bytes": nbytes} for tag, nbytes in stats.resident],
            cache_hits=stats.hits,
            cache_misses=stats.misses,
            cache_evictions=stats.evictions,
            cache_load_seconds=stats.load_seconds,
        )
        commit_without_waiting(session)
    except DB_UNAVAILABLE as error:
        session.rollback()
        logger.warning("could not record job %s on worker %s (%s)", run.job_id, NODE.name, first_line(error))
    except Exception:
        session.rollback()
        logger.exception("could not record job %s on worker %s", run.job_id, NODE.name)
