"""The worker's Celery app: the shared app from `core.queue` with diffq's tasks registered.

Start it with `diffq worker` (or `celery -A workers.celery_app worker`).
"""

from core.queue import get_celery

app = get_celery()

import workers.fleet  # noqa: E402,F401  (connects the worker's fleet signals)
import workers.tasks  # noqa: E402,F401  (registers the tasks on `app`)
