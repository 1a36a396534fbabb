"""The claim's choice on Postgres without sorting the queue: a walk of two indexes whose cost grows with
the number of owners with queued work, not with the number of queued jobs.

`core.scheduling.next_job_query` states the order: priority, generation before training, fair share
between owners, the affinity bound, age. Written as one `ORDER BY` over every queued job of the worker's
queues, Postgres has to read and sort them all at every claim: measured on a shared 2-core machine, 1 ms
with 300 jobs queued and 29 ms with 10,000, at every claim of a 10,000-job batch. This module picks the
same job from a handful of candidates:

1. `pairs`: each (queue, owner) with queued jobs, found by skipping along the index `ix_jobs_claim`
   (queue, owner, …), one probe per pair (a "loose index scan", written as a recursive query since
   Postgres has no skip scan), then those of the worker's queues. Walking every queue's pairs, rather
   than probing each of the worker's queues, keeps the probes on this index: probed with a queue that
   has few jobs (a worker's direct queue has none), the planner took the owner index and read every job.
2. `candidates`: per pair and kind (generation; training too, for a worker that trains), the head, its
   best job by (priority, age: `created_at`, then `batch_index`, then id), read from the same index in
   order; and per model the worker has loaded, that model's head, from `ix_jobs_claim_model` (queue,
   owner, model, …).
3. The full order over the candidates, with each owner's share (running jobs, latest start) worked out
   once per owner.

Why the candidates are enough: within one (queue, owner, kind) the owner's share and the kind are the
same for every job, so the full order there is (priority, starved, affinity, age). Its best job has the
top priority P. If a job of P with a loaded model m exists, m's head is the oldest such job, and it is
starved whenever any such job is; otherwise the best is the head itself (the oldest of P, starved
whenever any job of P is). So the best job of each (queue, owner, kind) is its head or one of its model
heads, and the full order over all of those picks the best job of all. `tests/core/test_scheduling.py`
checks the two queries against each other on random queues.

Each probe locks the row it returns (`FOR UPDATE SKIP LOCKED`) until the claim commits, a few
milliseconds: a worker claiming at the same moment skips the candidates another is choosing among and
takes the next job of each, as it skips the job being claimed with the full query. Used for a single
claim of a worker (`limit` 1, no `only`) on Postgres; SQLite (the embedded default, a few jobs) keeps the
full query, as do in-process runs of one named job.
"""

from functools import lru_cache
from typing import Any

from sqlalchemy import Integer, String, TextClause, bindparam, column, text
from sqlalchemy.dialects.postgresql import ARRAY

from core.job_types import TRAINING_TYPES
from core.tables import Job

# The claim's one value that changes with time, bound when it runs (`core.scheduling.claim_params`).
STARVED_BEFORE = "starved_before"

# `ORDER BY` of a (queue, owner)'s jobs, as `ix_jobs_claim` and `ix_jobs_claim_model` hold them.
_AGE = "j.priority DESC, j.created_at, j.batch_index, j.id"
_COLUMNS = "j.id, j.owner, j.priority, j.type, j.model, j.created_at, j.batch_index"


def _heads(kind: str, per_model: bool) -> str:
    """Per pair, the head of its jobs of `kind` (a condition on `j.type`), or of each loaded model's."""
    models = " CROSS JOIN unnest(CAST(:c_models AS varchar[])) AS m(model)" if per_model else ""
    model = " AND j.model = m.model" if per_model else ""
    return f"""
    SELECT h.* FROM pairs AS p{models} CROSS JOIN LATERAL (
        SELECT {_COLUMNS} FROM jobs AS j
        WHERE j.status = 'queued' AND j.queue = p.queue AND j.owner = p.owner{model} AND {kind}
        ORDER BY {_AGE} LIMIT 1 FOR UPDATE OF j SKIP LOCKED
    ) AS h"""


@lru_cache(maxsize=64)
def indexed_next_job(
    queues: tuple[str, ...],
    models: tuple[str, ...],
    trains: bool,
    max_running_jobs: int,
    fair_share: bool,
    affinity: bool,
) -> Any:
    """The id of the best queued job for a worker consuming `queues` with `models` loaded, chosen as
    `core.scheduling.next_job_query` chooses it, as a textual select with one column, `id`. Run it with
    `core.scheduling.claim_params`. Built once per worker and settings."""
    kinds = ["j.type <> ALL(:c_training)"] + (["j.type = ANY(:c_training)"] if trains else [])
    branches = [_heads(kind, per_model=False) for kind in kinds]
    if affinity and models:
        branches += [_heads(kind, per_model=True) for kind in kinds]
    where = "WHERE s.running < :c_max_running" if max_running_jobs else ""
    order = ["c.priority DESC", "c.type = ANY(:c_training)"]
    if fair_share:
        order += ["s.running", "s.last_start NULLS FIRST"]
    order.append(f"c.created_at < :{STARVED_BEFORE} DESC")
    if affinity and models:
        order.append("COALESCE(c.model = ANY(:c_models), false) DESC")
    order += ["c.created_at", "c.batch_index", "c.id"]
    sql = f"""
WITH RECURSIVE walk(queue, owner) AS (
    (SELECT j.queue, j.owner FROM jobs AS j WHERE j.status = 'queued' ORDER BY j.queue, j.owner LIMIT 1)
  UNION ALL
    SELECT n.queue, n.owner FROM walk AS w CROSS JOIN LATERAL (
        SELECT j.queue, j.owner FROM jobs AS j
        WHERE j.status = 'queued' AND (j.queue, j.owner) > (w.queue, w.owner)
        ORDER BY j.queue, j.owner LIMIT 1
    ) AS n
),
pairs AS (SELECT queue, owner FROM walk WHERE queue = ANY(CAST(:c_queues AS varchar[]))),
candidates AS ({" UNION ALL ".join(branches)}
),
shares AS MATERIALIZED (
    SELECT o.owner,
        (SELECT count(*) FROM jobs AS r WHERE r.owner = o.owner AND r.status = 'running') AS running,
        (SELECT max(l.started_at) FROM jobs AS l WHERE l.owner = o.owner) AS last_start
    FROM (SELECT DISTINCT owner FROM candidates) AS o
)
SELECT c.id FROM candidates AS c JOIN shares AS s ON s.owner = c.owner {where}
ORDER BY {", ".join(order)}
LIMIT 1"""
    statement: TextClause = text(sql).bindparams(
        bindparam("c_queues", list(queues), type_=ARRAY(String)),
        bindparam("c_training", sorted(str(name) for name in TRAINING_TYPES), type_=ARRAY(String)),
        bindparam(STARVED_BEFORE, type_=Job.created_at.type),
    )
    if affinity and models:
        statement = statement.bindparams(bindparam("c_models", list(models), type_=ARRAY(String)))
    if max_running_jobs:
        statement = statement.bindparams(bindparam("c_max_running", max_running_jobs, type_=Integer))
    return statement.columns(column("id", Job.id.type))
