"""The Celery app that both sides share: the API sends `diffq.run_job`, workers consume it.

Set up for long GPU jobs: a task is acknowledged only after it ends (acks_late), a worker
reserves one task at a time, and a task whose worker dies is handed back to the broker.
Which queue a job goes to is decided in core/routing.py.
"""

import logging
import uuid
from collections.abc import Iterable, Sequence
from functools import lru_cache

from celery import Celery
from kombu.exceptions import ChannelError
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Settings, get_settings
from core.jobs import mark_enqueued
from core.routing import pick_queue, queue_for
from core.tables import Job

logger = logging.getLogger(__name__)

RUN_JOB_TASK = "diffq.run_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("diffq", broker=settings.broker_url)
    # The broker must redeliver an unacknowledged task only after it could have finished.
    transport_options: dict[str, object] = {
        "visibility_timeout": settings.task_time_limit_s + 3600,
        # A worker takes from its queues in the order it lists them (Redis): its direct queue first,
        # then shared generation, then training. See core/routing.py.
        "queue_order_strategy": "priority",
    }
    if settings.broker_url.startswith("filesystem://"):
        folders = {name: settings.broker_dir / name for name in ("queue", "control")}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        transport_options |= {
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "control_folder": str(folders["control"]),
        }
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # How long a worker waits for the result of a pool process that died before it calls
        # the task lost. Results live in the jobs table, so there is nothing to wait for.
        worker_lost_wait=1.0,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_ignore_result=True,
        task_time_limit=settings.task_time_limit_s,
        task_default_queue=settings.queue,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        worker_hijack_root_logger=False,
    )
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def enqueue_job(
    session: Session, job_id: uuid.UUID, job_type: str | None = None, model: str | None = None
) -> str:
    """Hand a committed job to the broker and return the queue it went to.

    Call only after the job row is committed; this commits `session` once it has recorded the send.
    `job_type` and `model` pick the queue; when `job_type` is not given they are read from the row.
    Flower and the worker logs show the task's arguments as the job id and, as its keyword arguments,
    the job's type and model (the row stays the only input).
    """
    settings = get_settings()
    if job_type is None:
        job = session.get(Job, job_id)
        if job is None:
            raise ValueError(f"no job with id {job_id}")
        job_type, model = job.type, job.model
    try:
        queue = pick_queue(session, settings, job_type, model, queue_depth)
    except Exception:  # routing is an optimisation: a job must reach a queue regardless
        session.rollback()
        logger.exception("could not route job %s by affinity; sending it to the shared queue", job_id)
        queue = queue_for(job_type, settings)
    get_celery().send_task(
        RUN_JOB_TASK,
        args=[str(job_id)],
        queue=queue,
        kwargsrepr=repr({"type": job_type, "model": model}),
    )
    mark_enqueued(session, [job_id])
    session.commit()
    return queue


def enqueue_jobs(session: Session, job_ids: Sequence[uuid.UUID]) -> int:
    """Hand many committed jobs to their shared queues over one producer (one connection and
    channel), then record when the broker accepted them (`enqueued_at`); return how many were sent.

    Bulk sends skip affinity routing: it is meant for the next job of an idle worker, not for a
    backlog. A job left without `enqueued_at` (the broker was down, or this process died before
    recording it) is sent again by the reconciler. Call only after the jobs are committed; this commits
    `session` once it has recorded the sends.
    """
    settings, app = get_settings(), get_celery()
    kinds: dict[uuid.UUID, tuple[str, str | None]] = {}
    for start in range(0, len(job_ids), 500):
        rows = session.execute(
            select(Job.id, Job.type, Job.model).where(Job.id.in_(job_ids[start : start + 500]))
        )
        kinds.update({row.id: (row.type, row.model) for row in rows})
    sent: list[uuid.UUID] = []
    try:
        with app.producer_or_acquire() as producer:
            for job_id in job_ids:
                if job_id not in kinds:
                    continue
                job_type, model = kinds[job_id]
                app.send_task(
                    RUN_JOB_TASK,
                    args=[str(job_id)],
                    queue=queue_for(job_type, settings),
                    kwargsrepr=repr({"type": job_type, "model": model}),
                    producer=producer,
                )
                sent.append(job_id)
    finally:
        if sent:
            mark_enqueued(session, sent)
            session.commit()
    return len(sent)


def queue_depths(queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each of `queues` on the broker (Redis: the list lengths; filesystem: the files)."""
    depths: dict[str, int] = {}
    with get_celery().pool.acquire(block=True) as connection:
        channel = connection.default_channel
        for queue in queues:
            try:
                depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except ChannelError:  # Redis drops the key of an empty queue
                depths[queue] = 0
    return depths


def queue_depth(queue: str) -> int:
    return queue_depths([queue])[queue]
