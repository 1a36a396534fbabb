"""The Celery app that both sides share: the API sends `diffq.run_job`, workers consume it.

Set up for long GPU jobs: a task is acknowledged only after it ends (acks_late), a worker
reserves one task at a time, and a task whose worker dies is handed back to the broker.
"""

import uuid
from functools import lru_cache

from celery import Celery

from core.config import Settings, get_settings
from core.db import db_session
from core.models import Job
from core.specs import TRAINING_TYPES

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


def queue_for(job_type: str | None) -> str:
    """The queue a job of `job_type` goes to: `DIFFQ_TRAIN_QUEUE` for training if set, else `DIFFQ_QUEUE`."""
    settings = get_settings()
    if job_type in TRAINING_TYPES and settings.train_queue:
        return settings.train_queue
    return settings.queue


def enqueue_job(job_id: uuid.UUID, job_type: str | None = None) -> None:
    """Hand a committed job to the broker. Call only after the job row is committed.

    Without `job_type` the job is looked up, so that a requeued training job finds its queue again.
    """
    if job_type is None and get_settings().train_queue:
        with db_session() as session:
            job_type = session.get_one(Job, job_id).type
    get_celery().send_task(RUN_JOB_TASK, args=[str(job_id)], queue=queue_for(job_type))
