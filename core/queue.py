"""The Celery app that both sides share: the API sends `diffq.run_job`, workers consume it.

Set up for long GPU jobs: a task is acknowledged only after it ends (acks_late), a worker
reserves one task at a time, and a task whose worker dies is handed back to the broker.
"""

import uuid
from collections.abc import Sequence
from functools import lru_cache

from celery import Celery

from core.config import Settings, get_settings
from core.jobs import mark_enqueued

RUN_JOB_TASK = "diffq.run_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("diffq", broker=settings.broker_url)
    # The broker must redeliver an unacknowledged task only after it could have finished.
    transport_options: dict[str, object] = {"visibility_timeout": settings.task_time_limit_s + 3600}
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


def enqueue_job(job_id: uuid.UUID) -> None:
    """Hand a committed job to the broker. Call only after the job row is committed."""
    enqueue_jobs([job_id])


def enqueue_jobs(job_ids: Sequence[uuid.UUID]) -> int:
    """Hand committed jobs to the broker over one producer (one connection and channel), then
    record when it accepted them (`enqueued_at`); return how many were sent.

    Call only after the rows are committed. A job left without `enqueued_at` (the broker was
    down, or this process died before recording it) is sent again by the reconciler.
    """
    app, queue = get_celery(), get_settings().queue
    sent: list[uuid.UUID] = []
    try:
        with app.producer_or_acquire() as producer:
            for job_id in job_ids:
                app.send_task(RUN_JOB_TASK, args=[str(job_id)], queue=queue, producer=producer)
                sent.append(job_id)
    finally:
        if sent:
            mark_enqueued(sent)
    return len(sent)
