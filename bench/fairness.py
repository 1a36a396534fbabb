"""Fair share and priority, measured: how long a small owner waits behind another owner's backlog.

Owner A submits a batch of `--jobs` text2img jobs (1 step at 64×64 on tiny-sd); a moment later owner B
submits 5, and then owner C one job at priority 5. `--workers` CPU workers serve them. The same runs
twice, with fair share off (`DIFFQ_FAIR_SHARE=false`: jobs of a priority run oldest first) and on; each
phase starts fresh workers and ends once B's and C's jobs are done (A's leftovers are canceled). It
prints, for each, when B's first job started and its last ended, counted from B's submission, and how
long C's priority job waited.

Jobs are written with core's own functions (`insert_batch`, then `wake_workers`, as the API does) so
that each gets its owner before API keys exist to say whose they are.

Needs the machine's Postgres and Redis; uses its own database (diffq_bench_fairness) and Redis db 11
(`DIFFQ_BENCH_REDIS_DB`).

    .venv/bin/python bench/fairness.py [--jobs 2000] [--workers 2]
"""

import argparse
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TMP = Path(tempfile.mkdtemp(prefix="diffq-bench-fairness-"))
QUEUE = "diffq-bench-fairness"
os.environ.update(
    {
        "DIFFQ_HOME": str(TMP),
        "DIFFQ_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/diffq_bench_fairness",
        "DIFFQ_BROKER_URL": f"redis://127.0.0.1:6379/{os.environ.get('DIFFQ_BENCH_REDIS_DB', '11')}",
        "DIFFQ_STORAGE_URL": (TMP / "outputs").as_uri(),
        "DIFFQ_QUEUE": QUEUE,
        "DIFFQ_PROGRESS_MIN_INTERVAL_S": "0.5",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
)


@dataclass
class Phase:
    fair_share: bool
    b_first_start_s: float
    b_last_end_s: float
    priority_wait_s: float
    a_done_before_b: int  # A's jobs that had started before B's first one


def spec_values(seed: int, priority: int = 0) -> dict:
    from core.specs import JOB_SPEC
    from core.submit import job_fields

    spec = {
        "type": "text2img",
        "model": "tiny-sd",
        "params": {"prompt": "a squirrel", "num_inference_steps": 1, "width": 64, "height": 64, "seed": seed},
    }
    return job_fields(JOB_SPEC.validate_python(spec), priority)


def submit(owner: str, count: int, priority: int = 0) -> tuple[uuid.UUID, float]:
    """Write a batch of `owner`'s jobs and wake the workers; its id and when it was committed."""
    from sqlalchemy import update

    from core.batches import insert_batch
    from core.db import db_session
    from core.queue import wake_workers
    from core.scheduling import Waiting
    from core.tables import Job

    values = [spec_values(seed, priority) for seed in range(count)]
    with db_session() as session:
        batch_id, job_ids = insert_batch(session, owner, {"source": "bench"}, values, priority)
        session.execute(update(Job).where(Job.batch_id == batch_id).values(owner=owner))
    submitted = time.time()
    with db_session() as session:
        wake_workers(session, [Waiting(job_id, QUEUE, "text2img", "tiny-sd") for job_id in job_ids])
    return batch_id, submitted


def batch_jobs(batch_id: uuid.UUID) -> list:
    from sqlalchemy import select

    from core.db import db_session
    from core.tables import Job

    with db_session() as session:
        return list(session.scalars(select(Job).where(Job.batch_id == batch_id)))


def wait_done(batch_id: uuid.UUID, timeout: float = 3600) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = batch_jobs(batch_id)
        if all(job.status in ("succeeded", "failed", "canceled") for job in jobs):
            failed = [job for job in jobs if job.status != "succeeded"]
            if failed:
                raise RuntimeError(f"{len(failed)} jobs did not succeed: {failed[0].error}")
            return jobs
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} did not finish in {timeout}s")


def run_phase(jobs: int, workers: int, fair_share: bool) -> Phase:
    from core.db import db_session
    from core.jobs import cancel_jobs
    from core.tables import Job
    from tests.utils.services import WorkerProcess

    processes = [
        # A log per phase: a worker is ready when its own log says so.
        WorkerProcess(
            TMP / f"w{i}-{'on' if fair_share else 'off'}.log",
            env={"DIFFQ_FAIR_SHARE": str(fair_share).lower()},
            name=f"w{i}@%h",
        )
        for i in range(workers)
    ]
    try:
        for process in processes:
            process.wait_ready()
        a_batch, _ = submit("a", jobs)
        time.sleep(2.0)  # A's backlog is running
        b_batch, b_submitted = submit("b", 5)
        c_batch, _ = submit("c", 1, priority=5)
        b_jobs = wait_done(b_batch)
        [c_job] = wait_done(c_batch)
    finally:
        with db_session() as session:
            cancel_jobs(session, Job.batch_id == a_batch)
        for process in processes:
            process.stop()
    b_first = min(job.started_at.timestamp() for job in b_jobs)
    b_last = max(job.finished_at.timestamp() for job in b_jobs)
    a_before = sum(
        1 for job in batch_jobs(a_batch) if job.started_at and job.started_at.timestamp() < b_first
    )
    return Phase(
        fair_share,
        b_first - b_submitted,
        b_last - b_submitted,
        (c_job.started_at - c_job.created_at).total_seconds(),
        a_before,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import redis

    from core.config import get_settings
    from models_store.tiny import make_tiny_models
    from tests.utils.services import fresh_database

    make_tiny_models(get_settings().models_dir)
    fresh_database("diffq_bench_fairness")
    redis.Redis.from_url(os.environ["DIFFQ_BROKER_URL"]).flushdb()
    phases = []
    for fair_share in (False, True):
        phase = run_phase(args.jobs, args.workers, fair_share)
        phases.append(phase)
        state = "on " if fair_share else "off"
        print(
            f"fair share {state}: B's first job started {phase.b_first_start_s:7.2f} s "
            f"after B submitted ({phase.a_done_before_b} of A's jobs started before it), its last ended "
            f"{phase.b_last_end_s:7.2f} s after; C's priority-5 job waited {phase.priority_wait_s:6.2f} s",
            flush=True,
        )
    off, on = phases
    print(
        f"\nowner A: {args.jobs} jobs, then owner B: 5, then owner C: 1 at priority 5; {args.workers} CPU "
        f"workers, tiny-sd, 1 step at 64×64"
    )
    print(f"B's last job ended, off / on: {off.b_last_end_s / on.b_last_end_s:.1f}x sooner with fair share")


if __name__ == "__main__":
    main()
