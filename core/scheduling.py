"""What runs next: the worker decides, when it claims, in one SQL statement over the jobs table.

The jobs table is the queue. A free worker claims the queued job that is best for it now
(`next_job_query` states the order, `core.jobs.claim` runs it): one `UPDATE … WHERE id IN (SELECT …
ORDER BY … LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING …`; on Postgres the SELECT walks indexes rather
than sorting the queue and picks the same job (core/indexed_claim.py). On Postgres, `SKIP LOCKED` lets
many workers claim at once without waiting on each other or taking the same job; on SQLite (the
embedded default, one worker or a few) the single writer serializes the claims and the same statement
runs without the lock clause. Celery and Redis still carry the work to the workers, but a message is
only a wake-up: it names a job (for Flower and the logs, and so that a worker can tell a message from
another deployment), not the job that will run. So the broker's order, or a guess made at submit time
about which worker has a model, decides nothing, and a lost, duplicated or stolen message can delay a
job by a poll interval but never lose it.

Queues. A job waits in a named queue (`jobs.queue`): `DIFFQ_QUEUE` for generation, `DIFFQ_TRAIN_QUEUE`
for training, or any name a worker was started to serve (`diffq worker --queues`). A worker claims only
jobs of the queues it consumes, and one that serves only generation never claims a training job, so
training stays apart. Each worker also consumes a direct queue of its own, `<DIFFQ_QUEUE>.<node>`, where
wake-ups meant for it alone go.

The order a worker claims in, for the queued jobs of its queues:
1. Priority, higher first (`jobs.priority`; a batch's jobs take the batch's unless they set their own).
2. Generation before training, for a worker that serves both: a long training run starts only when no
   generation job waits for this worker.
3. Fair share between owners: the owner with the fewest running jobs first, and among owners with as
   many, the one whose latest job started longest ago (an owner who never ran first). This is "least
   running work" with a round-robin tie-break rather than deficit round-robin: both counts are read from
   the jobs table at claim time (an index on `(owner, started_at)`, the running rows), so there is no
   scheduler state to keep in step with cancels, requeues and crashes, and it holds with any number of
   workers. An owner's single job submitted after another owner's 10,000 is the next job any worker
   claims: it waits about one job's time divided by the number of workers. With
   `DIFFQ_FAIR_SHARE=false` this step is skipped and jobs of a priority run oldest first.
4. Affinity, among jobs equal so far: a job whose model this worker has loaded before one it would have
   to load, but never past a job that has waited `DIFFQ_AFFINITY_MAX_WAIT_S` (those come first, oldest
   first). So affinity can pass a job over only during its first `DIFFQ_AFFINITY_MAX_WAIT_S`; after that
   the job is ahead of every younger job of its priority and owner rank, and the next free worker that
   serves its queue takes it. (Before, the API guessed the worker when it sent the message, and had to
   cap each worker's backlog to keep that promise.)
5. Age: oldest first; then, for a batch's jobs (written together, so of one age), their order in the
   batch (`batch_index`); then the id, so that the order is total.
What it costs: `next_job_query` sorts the queued jobs of the worker's queues (the per-owner figures are
worked out once per owner, in a materialized CTE); on a shared 2-core machine a claim and its commit took
10 ms with 2,000 jobs queued and 37 ms with 10,000 (bench/claim_depth.py). SQLite still runs it. On
Postgres the index walk (core/indexed_claim.py) takes 3 ms at any of those depths.

Fusion. A text2img job's partners, the queued jobs that can share its pipeline call (the same
`jobs.fuse_key`, core/fusion.py), are claimed in the same transaction right after it, oldest first
(core/jobs.py `claim_partners`); they ride along whatever their owner, except that with a running
limit only the lead's owner's jobs, within its limit, do.

An owner with `DIFFQ_MAX_RUNNING_JOBS` running jobs is skipped. To make that limit exact, claims take a
transaction-level advisory lock when it is set (Postgres), so two workers can't both take an owner's
last slot; without a limit nothing serializes claims.

Wake-ups (core/queue.py, workers/wakeup.py). Submitting jobs sends at most one message per live worker
that serves their queue, or one when no worker is known: a 10,000-job batch costs the broker a handful
of messages. A wake-up goes to the direct queue of an idle worker that has the job's model loaded, else
to the shared queue. A task claims the next job itself once a call ends, for a few seconds
(workers/tasks.py `TASK_RUNS_FOR_S`), as long as the best job's model is loaded there (one that needs a
load is left to the wake-ups, which prefer an idle worker that has it), and a worker that ran a task
wakes itself (its direct queue) while its queues hold work: so a worker drains the queue without a
Celery hand-off per job, and each task shows in Flower with the jobs it ran. And an idle worker reads
the jobs table every `DIFFQ_IDLE_POLL_S` and wakes itself if there is work it could claim: every queued
job runs while an eligible worker is idle, whatever the broker lost and whoever took its messages.
"""

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import Select, and_, bindparam, false, func, select, text
from sqlalchemy.orm import Session, aliased

from core.config import Settings, get_settings
from core.indexed_claim import STARVED_BEFORE, indexed_next_job
from core.job_types import TRAINING_TYPES
from core.tables import Job, JobStatus

# The key of the advisory lock that serializes claims while `DIFFQ_MAX_RUNNING_JOBS` is set.
CLAIM_LOCK_KEY = 0x64696666  # "diff"


def direct_queue(node: str, settings: Settings | None = None) -> str:
    """The queue only worker `node` consumes: `diffq.gpu0-host` for `gpu0@host` (brokers take only
    letters, digits, `.`, `_` and `-` in the names of queues)."""
    queue = (settings or get_settings()).queue
    return f"{queue}.{''.join(c if c.isalnum() or c in '._-' else '-' for c in node)}"


def worker_queues(serve: str, node: str, settings: Settings, queues: list[str] | None = None) -> list[str]:
    """The queues a worker named `node` consumes: its direct queue, then the given `queues`, or those
    that serving "generation", "training" or "both" means."""
    if queues:
        return [direct_queue(node, settings), *queues]
    if serve not in ("generation", "training", "both"):
        raise ValueError(f"a worker serves 'generation', 'training' or 'both', not {serve!r}")
    consumed = [direct_queue(node, settings)]
    if serve in ("generation", "both"):
        consumed.append(settings.queue)
    if serve in ("training", "both"):
        consumed.append(settings.train_queue)
    return consumed


class Waiting(NamedTuple):
    """A queued job, as much of it as waking a worker for it needs."""

    id: uuid.UUID
    queue: str
    type: str
    model: str | None


def serves_training(queues: list[str], node: str, settings: Settings) -> bool:
    """Whether a worker consuming `queues` may claim training jobs: unless it serves only the generation
    queue (`diffq worker --serve generation`); a queue named with `--queues` may hold either."""
    return any(queue not in (settings.queue, direct_queue(node, settings)) for queue in queues)


@dataclass(frozen=True)
class Claimer:
    """A worker as the claim sees it: its name, the queues it serves, the models it has loaded, whether
    it may train; `only` restricts it to one job (a task run in-process, for tests and debugging)."""

    worker: str
    queues: tuple[str, ...]
    models: tuple[str, ...] = ()
    trains: bool = True
    device: str | None = None
    only: uuid.UUID | None = None


def _candidates(claimer: Claimer) -> Any:
    """The queued jobs `claimer` may claim, whatever the owners' limits."""
    conditions = [Job.status == JobStatus.QUEUED]
    if claimer.only is not None:
        conditions.append(Job.id == claimer.only)
    else:
        conditions.append(Job.queue.in_(claimer.queues))
    if not claimer.trains:
        conditions.append(Job.type.not_in(TRAINING_TYPES))
    return and_(*conditions)


def _owner_shares(claimer: Claimer) -> Any:
    """Per owner with work for `claimer`: its running jobs and when its latest job started."""
    waiting = select(Job.owner).where(_candidates(claimer)).distinct().subquery("waiting")
    runs, starts = aliased(Job, name="runs"), aliased(Job, name="starts")
    running = (
        select(func.count())
        .where(runs.owner == waiting.c.owner, runs.status == JobStatus.RUNNING)
        .scalar_subquery()
    )
    last_start = select(func.max(starts.started_at)).where(starts.owner == waiting.c.owner).scalar_subquery()
    # Materialized: worked out once per owner, not once per queued job the planner joins it to.
    return (
        select(waiting.c.owner, running.label("running"), last_start.label("last_start"))
        .cte("shares")
        .prefix_with("MATERIALIZED")
    )


# The claim's one value that changes with time, `STARVED_BEFORE`, is bound when it runs (`claim_params`):
# the query itself is built once per claimer and settings, since building it costs a worker several
# milliseconds a claim.


def next_job_query(claimer: Claimer, settings: Settings, limit: int = 1) -> Select:
    """The ids of the `limit` best queued jobs for `claimer`, in the order of the module's docstring,
    locked for the claim (`FOR UPDATE SKIP LOCKED` on Postgres). Run it with `claim_params`."""
    return _next_job_query(*_query_key(claimer, settings, limit))


def next_job_cte(claimer: Claimer, settings: Settings, dialect: str, limit: int = 1) -> Any:
    """`next_job_query`'s choice as a materialized CTE with one column, `id`, the same object for the same
    claimer and settings (so that what is built on it can be cached too). On Postgres, a worker's claim of
    one job walks the claim indexes instead of sorting the queue (core/indexed_claim.py); the same job
    comes out. Materialized, so evaluated once: a plain `IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` may
    be run again per row by the planner and claim more than n jobs."""
    if dialect == "postgresql" and limit == 1 and claimer.only is None:
        affinity = settings.affinity and bool(claimer.models)
        return _indexed_cte(
            claimer.queues,
            claimer.models if affinity else (),
            claimer.trains,
            settings.max_running_jobs,
            settings.fair_share,
            affinity,
        )
    return _next_job_cte(*_query_key(claimer, settings, limit))


@lru_cache(maxsize=64)
def _indexed_cte(*key: Any) -> Any:
    return indexed_next_job(*key).cte("chosen").prefix_with("MATERIALIZED")


def _query_key(claimer: Claimer, settings: Settings, limit: int) -> tuple[Claimer, int, bool, bool, int]:
    affinity = settings.affinity and bool(claimer.models)
    return claimer, settings.max_running_jobs, settings.fair_share, affinity, limit


@lru_cache(maxsize=64)
def _next_job_cte(*key: Any) -> Any:
    return _next_job_query(*key).cte("chosen").prefix_with("MATERIALIZED")


def claim_params(settings: Settings, now: datetime) -> dict[str, datetime]:
    """The bind parameters of `next_job_query` at time `now`."""
    return {STARVED_BEFORE: now - timedelta(seconds=settings.affinity_max_wait_s)}


@lru_cache(maxsize=64)
def _next_job_query(
    claimer: Claimer, max_running_jobs: int, fair_share: bool, affinity: bool, limit: int
) -> Select:
    shares = _owner_shares(claimer)
    query = select(Job.id).join(shares, shares.c.owner == Job.owner).where(_candidates(claimer))
    if max_running_jobs:
        query = query.where(shares.c.running < max_running_jobs)
    order: list[Any] = [Job.priority.desc(), Job.type.in_(TRAINING_TYPES).asc()]
    if fair_share:
        order += [shares.c.running.asc(), shares.c.last_start.asc().nulls_first()]
    starved = Job.created_at < bindparam(STARVED_BEFORE, type_=Job.created_at.type)
    order.append(starved.desc())
    if affinity:
        # A job without a model (training from scratch) has no affinity: false, not NULL, which DESC
        # would sort first.
        order.append(func.coalesce(Job.model.in_(claimer.models), false()).desc())
    # The sort runs over the candidates whatever the index (its keys above are expressions); one more
    # key, compared only between jobs of one age, costs nothing measurable.
    order += [Job.created_at.asc(), Job.batch_index.asc().nulls_last(), Job.id.asc()]
    return query.order_by(*order).limit(limit).with_for_update(skip_locked=True, of=Job)


def serialize_claims(session: Session, settings: Settings) -> None:
    """Hold the claim lock until the caller's transaction ends, when per-owner limits need exact counts
    (Postgres; SQLite's single writer serializes claims already)."""
    if settings.max_running_jobs and session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CLAIM_LOCK_KEY})


def work_for(session: Session, claimer: Claimer, settings: Settings | None = None) -> Waiting | None:
    """A queued job `claimer` could claim now (any, not the best), or None: whether to wake it."""
    settings = settings or get_settings()
    query = select(Job.id, Job.queue, Job.type, Job.model).where(_candidates(claimer))
    if settings.max_running_jobs:
        shares = _owner_shares(claimer)
        query = query.join(shares, shares.c.owner == Job.owner).where(
            shares.c.running < settings.max_running_jobs
        )
    row = session.execute(query.limit(1)).first()
    return Waiting(*row) if row is not None else None


def priority_problem(priority: int, limit: int) -> str | None:
    """Why an owner whose keys allow at most `limit` (settings `max_priority`, or a key's
    `limits["max_priority"]`) may not submit at `priority`; None if it may."""
    if priority <= limit:
        return None
    return (
        f"priority {priority} is above the {limit} this API key allows; submit at a priority of at most "
        f"{limit}, or ask an admin for a key with a higher max_priority"
    )
