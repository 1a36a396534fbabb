"""Which queue a job goes to: by job type, then by model affinity.

Queues. Generation jobs go to `DIFFQ_QUEUE`, training jobs to `DIFFQ_TRAIN_QUEUE`, so a worker that
serves only generation never waits behind a training run. Each worker also consumes a direct queue of
its own, `<queue>.<node name>` (e.g. `diffq.gpu0-host` for node `gpu0@host`).

Affinity. A worker keeps recently used pipelines loaded; a job whose model is already loaded somewhere
should run there instead of making another worker load it. The API cannot see the workers' memory, so
each worker writes its loaded models to its row in the `workers` table (core/fleet.py). When a
generation job is submitted, `pick_queue` looks for live workers that have its model loaded (or are
loading it for the job they run now) and whose backlog (the job they run, plus the jobs waiting in their
direct queue) is below `DIFFQ_AFFINITY_MAX_BACKLOG`; the one with the least backlog gets the job in its
direct queue. Anything else goes to the shared queue: a model no worker has loaded, or a loaded one whose
workers are all busy enough.

Why a cold model never starves: it always goes to the shared queue, which every worker consumes next to
its direct queue, and a worker takes from its queues in turn (kombu's fair cycle), so a free worker takes
the oldest shared job at most one direct job later; and a direct queue never holds more than
`DIFFQ_AFFINITY_MAX_BACKLOG` jobs, so warm jobs can't pile up ahead of it either.
"""

import re
from collections.abc import Callable

from sqlalchemy.orm import Session

from core.config import Settings
from core.fleet import live_workers, resident_models

# Job types that train rather than generate; they go to the training queue. Add new ones here.
TRAINING_JOB_TYPES = frozenset({"train_unconditional", "train_lora"})


def queue_for(job_type: str, settings: Settings) -> str:
    """The shared queue for jobs of `job_type`."""
    return settings.train_queue if job_type in TRAINING_JOB_TYPES else settings.queue


def direct_queue(queue: str, node: str) -> str:
    """The queue that only worker `node` consumes next to the shared `queue`: `diffq.gpu0-host` for
    `gpu0@host` (brokers take only letters, digits, `.`, `_` and `-` in the names of queues)."""
    return f"{queue}.{re.sub(r'[^A-Za-z0-9._-]', '-', node)}"


def pick_queue(
    session: Session,
    settings: Settings,
    job_type: str,
    model: str | None,
    queue_depth: Callable[[str], int],
) -> str:
    """The queue to send a job to: a warm, not too busy worker's direct queue, else the shared queue."""
    shared = queue_for(job_type, settings)
    if not settings.affinity or model is None or job_type in TRAINING_JOB_TYPES:
        return shared
    best: tuple[int, str] | None = None
    for worker in live_workers(session, settings.worker_stale_s):
        own = direct_queue(shared, worker.name)
        if own not in worker.queues or model not in resident_models(worker):
            continue
        backlog = queue_depth(own) + (1 if worker.current_job else 0)
        if backlog < settings.affinity_max_backlog and (best is None or backlog < best[0]):
            best = (backlog, own)
    return best[1] if best else shared


def worker_queues(serve: str, node: str, settings: Settings) -> list[str]:
    """The queues a worker named `node` consumes to serve "generation", "training" or "both"."""
    if serve not in ("generation", "training", "both"):
        raise ValueError(f"a worker serves 'generation', 'training' or 'both', not {serve!r}")
    queues = []
    if serve in ("generation", "both"):
        queues += [settings.queue, direct_queue(settings.queue, node)]
    if serve in ("training", "both"):
        queues.append(settings.train_queue)
    return queues
