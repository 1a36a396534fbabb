"""The Celery app that both sides share, and the wake-ups it carries.

Set up for long GPU jobs: a task is acknowledged only after it ends (acks_late), a worker reserves one
task at a time, and a task whose worker dies is handed back to the broker. A message, `diffq.run_job`,
is a wake-up: the worker that takes it claims the best queued job for itself (core/scheduling.py), which
may be another than the one the message names.
"""

import logging
import uuid
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from celery import Celery
from sqlalchemy.orm import Session

from core.config import Settings, get_settings
from core.scheduling import Waiting, direct_queue
from core.worker_nodes import live_workers, resident_models

logger = logging.getLogger(__name__)

RUN_JOB_TASK = "diffq.run_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("diffq", broker=settings.broker_url)
    # The broker must redeliver an unacknowledged task only after it could have finished.
    transport_options: dict[str, object] = {
        "visibility_timeout": settings.task_time_limit_s + 3600,
        # A worker takes from its queues in the order it lists them (Redis): its direct queue first,
        # where the wake-ups meant for it alone are.
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


def send_wakeup(queue: str, job: Waiting, producer: Any = None) -> None:
    """Send one wake-up to `queue` naming `job`: Flower and the worker logs show the job id as the task's
    argument and its type and model as its keyword arguments."""
    get_celery().send_task(
        RUN_JOB_TASK,
        args=[str(job.id)],
        queue=queue,
        kwargsrepr=repr({"type": job.type, "model": job.model}),
        producer=producer,
    )


def wake_workers(session: Session, jobs: Sequence[Waiting]) -> int:
    """Wake workers for newly queued `jobs`; return how many messages were sent.

    Per queue, at most one message per live worker that serves it (one when none is known): enough to
    start every worker that could take them, since a worker that ran a job wakes itself while work is
    left (core/scheduling.py). An idle worker that has a job's model loaded is woken in its own queue,
    so that it, rather than a cold one, claims first. Call only after the jobs are committed; a message
    that is lost only delays them until a worker's idle poll. Reads the workers table on `session`.
    """
    if not jobs:
        return 0
    settings = get_settings()
    live = live_workers(session, settings.worker_stale_s)
    by_queue: dict[str, list[Waiting]] = {}
    for job in jobs:
        by_queue.setdefault(job.queue, []).append(job)
    messages: list[tuple[str, Waiting]] = []
    for queue, waiting in by_queue.items():
        serving = [worker for worker in live if queue in (worker.queues or [])]
        budget = min(len(waiting), max(1, len(serving)))
        woken: set[uuid.UUID] = set()
        for worker in serving if settings.affinity else []:
            own = direct_queue(worker.name, settings)
            if len(woken) == budget or worker.current_job is not None or own not in worker.queues:
                continue
            models = resident_models(worker)
            match = next((job for job in waiting if job.model in models and job.id not in woken), None)
            if match is not None:
                messages.append((own, match))
                woken.add(match.id)
        rest = (job for job in waiting if job.id not in woken)
        messages += [(queue, job) for job, _ in zip(rest, range(budget - len(woken)), strict=False)]
    with get_celery().producer_or_acquire() as producer:
        for queue, job in messages:
            send_wakeup(queue, job, producer)
    return len(messages)
