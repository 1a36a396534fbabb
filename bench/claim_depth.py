"""What a claim costs as the queue grows: the index walk (core/indexed_claim.py) against the full sort.

For each depth (`--depths`, jobs queued in one queue, by `--owners` owners), claims as a worker makes them:
each one its own transaction, committed (with the worker's row update left out, which both share), the
claimed job put back in the queue by a second transaction so that the depth holds. The two ways take
turns claim by claim, in this one process run, so that other load on the machine falls on both alike;
the report gives milliseconds per claim (median and 90th percentile) and the ratio.

The full sort is `core.scheduling.next_job_query` under the same UPDATE, which is what SQLite (and any
claim of more than one job) still runs. Needs the machine's Postgres; uses its own database
(diffq_bench_claim, or `DIFFQ_BENCH_DB`), dropped and made again each run.

    .venv/bin/python bench/claim_depth.py [--depths 300,2000,10000] [--claims 60] [--owners 3]
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BENCH_DB = os.environ.get("DIFFQ_BENCH_DB", "diffq_bench_claim")
os.environ["DIFFQ_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{BENCH_DB}"
QUEUE = "bench-claim"


def fill(session, depth: int, owners: int) -> None:
    """`depth` queued text2img jobs on two models, owners taking turns, a millisecond apart."""
    from sqlalchemy import text

    session.execute(text("DELETE FROM jobs"))
    session.execute(
        text(
            """
            INSERT INTO jobs (id, type, model, params, status, outputs, attempts, created_at, updated_at,
                              owner, priority, queue)
            SELECT gen_random_uuid(), 'text2img', CASE WHEN i % 2 = 0 THEN 'm1' ELSE 'm2' END, '{}', 'queued',
                   '[]', 0, now() - make_interval(secs => (:depth - i) / 1000.0), now(),
                   'owner-' || (i % :owners), 0, :queue
            FROM generate_series(1, :depth) AS i
            """
        ),
        {"depth": depth, "owners": owners, "queue": QUEUE},
    )
    session.commit()
    if os.environ.get("NO_ANALYZE") is None:
        session.execute(text("ANALYZE jobs"))
    session.commit()


def timed_claim(session, statement, params) -> tuple[float, object]:
    start = time.perf_counter()
    [job_id] = session.scalars(statement, params).all()
    session.commit()
    return time.perf_counter() - start, job_id


def requeue(session, job_id) -> None:
    from sqlalchemy import update

    from core.tables import Job, JobStatus

    session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.QUEUED))
    session.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="300,2000,10000")
    parser.add_argument("--claims", type=int, default=60)
    parser.add_argument("--owners", type=int, default=3)
    args = parser.parse_args()

    from sqlalchemy import update

    from core.config import get_settings
    from core.db import db_session
    from core.scheduling import Claimer, claim_params, next_job_cte, next_job_query
    from core.tables import Job, JobStatus, utcnow
    from tests.utils.services import fresh_database

    fresh_database(BENCH_DB)
    settings = get_settings()
    who = Claimer(worker="bench", queues=("bench-claim.bench", QUEUE), models=("m1",), trains=False)

    def start(chosen):
        # The claim's UPDATE (core/jobs.py), without its webhook and worker-row writes.
        return (
            update(Job)
            .where(Job.id.in_(chosen.select().with_only_columns(chosen.c.id)), Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.RUNNING, attempts=Job.attempts + 1)
            .returning(Job.id)
        )

    ways = {
        "index walk": start(next_job_cte(who, settings, "postgresql")),
        "full sort": start(next_job_query(who, settings).cte("chosen").prefix_with("MATERIALIZED")),
    }
    print(f"{args.claims} claims per way and depth, {args.owners} owners, ms per claim (median / p90)")
    with db_session() as session:
        for depth in [int(d) for d in args.depths.split(",")]:
            fill(session, depth, args.owners)
            seconds: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(args.claims):
                for name, statement in ways.items():
                    elapsed, job_id = timed_claim(session, statement, claim_params(settings, utcnow()))
                    seconds[name].append(elapsed)
                    requeue(session, job_id)
            line = []
            for name, values in seconds.items():
                median = 1000 * statistics.median(values)
                p90 = 1000 * statistics.quantiles(values, n=10)[-1]
                line.append(f"{name}: {median:6.2f} / {p90:6.2f}")
            ratio = statistics.median(seconds["full sort"]) / statistics.median(seconds["index walk"])
            print(f"{depth:>6} queued  " + "   ".join(line) + f"   full / walk: {ratio:5.1f}x")


if __name__ == "__main__":
    main()
