"""Which queue a job goes to: by job type, then by model affinity.

Queues. Generation jobs go to `DIFFQ_QUEUE`, training jobs to `DIFFQ_TRAIN_QUEUE`, so a worker that
serves only generation never waits behind a training run. Each generation worker also consumes a direct
queue of its own, `<queue>.<node name>` (e.g. `diffq.gpu0-host` for node `gpu0@host`). On Redis a worker
takes from its queues in a fixed order (kombu's "priority" queue order): its direct queue, then the shared
generation queue, then the training queue, so a worker serving both trains only when no generation job
waits for it.

Affinity. A worker keeps recently used pipelines loaded; a job whose model is already loaded somewhere
should run there instead of making another worker load it. The API cannot see the workers' memory, so
each worker writes its loaded models, and its averages, to its row in the `workers` table
(core/worker_nodes.py). For a generation job, `pick_queue` considers the live workers that consume a direct
queue and have the job's model loaded (or are loading it for the job they run now) with a backlog (the
job they run plus those waiting in their direct queue) below `DIFFQ_AFFINITY_MAX_BACKLOG`; of those it
takes the one with the least backlog, then:
- if a generation job has been queued longer than `DIFFQ_AFFINITY_MAX_WAIT_S`, the new one goes to the
  shared queue behind it: nothing more overtakes it;
- if that worker is idle, the job goes to its direct queue;
- if it is busy while another worker is idle and the shared queue is empty, the job would wait about
  `(backlog - 1/2) × its mean warm run time` there (the running job is half done, on average), or cost
  about `the idle worker's mean load time` elsewhere: it goes to whichever is shorter (the direct queue
  while either is unknown);
- if every worker is busy, it goes to the direct queue, since waiting anywhere is the same but there no
  load follows.
Anything else goes to the shared queue: a model no worker has loaded, or whose workers are too busy.

Why a cold model never starves: it goes to the shared queue, which every generation worker consumes
right after its direct queue. Once it has waited `DIFFQ_AFFINITY_MAX_WAIT_S`, no job is sent to a direct
queue any more; each direct queue holds fewer than `DIFFQ_AFFINITY_MAX_BACKLOG` jobs, so within that many
jobs every worker's direct queue is empty and the next free worker takes the oldest shared job. So a job
is overtaken by affinity only in its first `DIFFQ_AFFINITY_MAX_WAIT_S`, and after that by at most
`DIFFQ_AFFINITY_MAX_BACKLOG - 1` jobs per worker.
"""

import re
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.config import Settings
from core.job_types import TRAINING_TYPES
from core.tables import Job, JobStatus, WorkerNode, utcnow
from core.worker_nodes import live_workers, resident_models


def queue_for(job_type: str, settings: Settings) -> str:
    """The shared queue for jobs of `job_type`: by its queue kind in core/job_types.py."""
    return settings.train_queue if job_type in TRAINING_TYPES else settings.queue


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
    """The queue to send a job to: a warm worker's direct queue when that is quicker, else the shared one."""
    shared = queue_for(job_type, settings)
    if not settings.affinity or model is None or job_type in TRAINING_TYPES:
        return shared
    serving = [w for w in live_workers(session, settings.worker_stale_s) if shared in w.queues]
    backlog = {}
    for worker in serving:
        own = direct_queue(shared, worker.name)
        waiting = queue_depth(own) if own in worker.queues else 0
        backlog[worker.name] = waiting + (1 if worker.current_job else 0)
    warm = [
        w
        for w in serving
        if direct_queue(shared, w.name) in w.queues
        and model in resident_models(w)
        and backlog[w.name] < settings.affinity_max_backlog
    ]
    if not warm:
        return shared
    if _oldest_generation_wait_s(session) > settings.affinity_max_wait_s:
        return shared
    best = min(warm, key=lambda w: backlog[w.name])
    idle = [w for w in serving if backlog[w.name] == 0]
    if backlog[best.name] and idle and queue_depth(shared) == 0:
        run_s = _mean_run_seconds(best)
        loads = [s for s in map(_mean_load_seconds, idle) if s is not None]
        if run_s is not None and loads and (backlog[best.name] - 0.5) * run_s >= min(loads):
            return shared
    return direct_queue(shared, best.name)


def _oldest_generation_wait_s(session: Session) -> float:
    """How long the oldest queued generation job has waited, in seconds (0 when none waits)."""
    oldest = session.scalar(
        select(func.min(Job.created_at)).where(
            Job.status == JobStatus.QUEUED, Job.type.not_in(TRAINING_TYPES)
        )
    )
    if oldest is None:
        return 0.0
    return (utcnow() - oldest).total_seconds()


def _mean_run_seconds(worker: WorkerNode) -> float | None:
    """A job's time on `worker` once its model is loaded."""
    if not worker.jobs_run:
        return None
    return max(worker.busy_seconds - worker.cache_load_seconds, 0.0) / worker.jobs_run


def _mean_load_seconds(worker: WorkerNode) -> float | None:
    return worker.cache_load_seconds / worker.cache_misses if worker.cache_misses else None


def worker_queues(serve: str, node: str, settings: Settings) -> list[str]:
    """The queues a worker named `node` consumes to serve "generation", "training" or "both"."""
    if serve not in ("generation", "training", "both"):
        raise ValueError(f"a worker serves 'generation', 'training' or 'both', not {serve!r}")
    # In the order a worker takes from them (see the module's docstring).
    queues = []
    if serve in ("generation", "both"):
        queues += [direct_queue(settings.queue, node), settings.queue]
    if serve in ("training", "both"):
        queues.append(settings.train_queue)
    return queues
