"""What model affinity buys: jobs/s on a mixed-model workload, claimed with and without affinity.

Two CPU worker processes, each with a pipeline cache budget that fits one model, serve text2img jobs over
three models (copies of tiny-sd under other names), picked at random with a fixed seed. A closed loop
of `--clients` clients keeps that many jobs in flight: each submits a job through the API, waits for it
to end, and submits the next. The same job list runs once with affinity off (`DIFFQ_AFFINITY=false`:
workers claim oldest first, wake-ups go to the shared queue) and once with it on, alternating for
`--rounds` rounds, in this one process run. Each phase starts two fresh workers, so every phase starts
from the same cold caches.

The gain depends on how a load compares with a run: the more a load costs next to a job, the more
affinity saves. The script prints both, measured: with tiny models on a CPU a load takes about a third
of a job; loading a real Stable Diffusion onto a GPU takes about as long as a 25-step job, or longer.

Needs the machine's Postgres and Redis; uses its own database (diffq_bench_affinity) and Redis db 12
(`DIFFQ_BENCH_REDIS_DB`).

    .venv/bin/python bench/affinity.py [--jobs 60] [--clients 4] [--steps 4] [--rounds 2]
"""

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TMP = Path(tempfile.mkdtemp(prefix="diffq-bench-affinity-"))
os.environ.update(
    {
        "DIFFQ_HOME": str(TMP),
        "DIFFQ_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/diffq_bench_affinity",
        "DIFFQ_BROKER_URL": f"redis://127.0.0.1:6379/{os.environ.get('DIFFQ_BENCH_REDIS_DB', '12')}",
        "DIFFQ_QUEUE": "diffq-bench-affinity",
        "DIFFQ_PROGRESS_MIN_INTERVAL_S": "0.5",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }
)

MODELS = ["tiny-sd", "tiny-sd-b", "tiny-sd-c"]
WARM_MODEL = "tiny-sd-warm"
WORKERS = ["bench-a", "bench-b"]


@dataclass
class Phase:
    affinity: bool
    jobs: int
    seconds: float
    hits: int
    misses: int
    load_seconds: float
    run_seconds: float  # mean time from a job's start to its end, loads included


def spec(model: str, steps: int, seed: int) -> dict:
    return {
        "type": "text2img",
        "model": model,
        "params": {
            "prompt": "a squirrel in Picasso style",
            "num_inference_steps": steps,
            "width": 64,
            "height": 64,
            "seed": seed,
            "num_images": 1,
        },
    }


def cache_totals(jobs: int = 0) -> tuple[int, int, float]:
    """The workers' cache hits, misses and load seconds, once their rows count `jobs` jobs run (a worker
    writes its row after a job has ended, so the last jobs' counts may come a moment after their end)."""
    from sqlalchemy import select

    from core.db import db_session
    from core.tables import WorkerNode

    give_up = time.monotonic() + 10
    while True:
        with db_session() as session:
            rows = session.scalars(select(WorkerNode)).all()
        if sum(r.jobs_run for r in rows) >= jobs or time.monotonic() > give_up:
            return (
                sum(r.cache_hits for r in rows),
                sum(r.cache_misses for r in rows),
                sum(r.cache_load_seconds for r in rows),
            )
        time.sleep(0.1)


def start_workers(api_url: str, one_model_mb: float, affinity: bool) -> list:
    from tests.utils.services import WorkerProcess

    workers = [
        WorkerProcess(
            TMP / f"{name}-{'on' if affinity else 'off'}-{time.monotonic_ns()}.log",  # ready: in its own log
            env={
                "DIFFQ_CACHE_BUDGET_MB": f"{one_model_mb * 1.5:.3f}",
                "DIFFQ_PUBLIC_URL": api_url,
                "DIFFQ_AFFINITY": str(affinity).lower(),
            },
            name=f"{name}@%h",
        )
        for name in WORKERS
    ]
    for worker in workers:
        worker.wait_ready()
    return workers


def run_phase(api_url: str, workload: list[str], clients: int, steps: int, affinity: bool) -> Phase:
    from cli.client import Client
    from core.config import get_settings
    from tests.utils.jobs import wait_finished

    get_settings().affinity = affinity  # the API runs in this process and reads this on every submit
    hits0, misses0, load0 = cache_totals()
    pending = list(enumerate(workload))
    lock = threading.Lock()
    run_seconds: list[float] = []
    errors: list[str] = []

    def client_loop() -> None:
        client = Client(api_url)
        while True:
            with lock:
                if not pending:
                    return
                seed, model = pending.pop(0)
            job = wait_finished(client, client.submit(spec(model, steps, seed))["id"], timeout=600)
            if job["status"] != "succeeded":
                errors.append(f"{job['id']}: {job['error']}")
            started, finished = (datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at"))
            run_seconds.append((finished - started).total_seconds())

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} jobs failed: {errors[:3]}")
    hits, misses, load = cache_totals(jobs=len(workload))
    return Phase(
        affinity,
        len(workload),
        seconds,
        hits - hits0,
        misses - misses0,
        load - load0,
        sum(run_seconds) / len(run_seconds),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import redis
    import torch

    from cli.quickstart import free_port, start_api
    from core.config import get_settings
    from models_store.memory import estimate_folder_bytes
    from models_store.tiny import make_tiny_models
    from tests.utils.services import fresh_database, use_new_api_key

    models_dir = get_settings().models_dir
    make_tiny_models(models_dir)
    for name in [*MODELS[1:], WARM_MODEL]:
        shutil.copytree(models_dir / "tiny-sd", models_dir / name, dirs_exist_ok=True)
    one_model_mb = estimate_folder_bytes(models_dir / "tiny-sd", torch.float32) / 2**20

    fresh_database("diffq_bench_affinity")
    redis.Redis.from_url(os.environ["DIFFQ_BROKER_URL"]).flushdb()
    use_new_api_key("bench", max_queued_jobs=0, rate_limit="1000000/second")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    start_api(port)
    rng = random.Random(args.seed)
    workload = [rng.choice(MODELS) for _ in range(args.jobs)]
    phases: list[Phase] = []
    for _round in range(args.rounds):
        for affinity in (False, True):
            workers = start_workers(api_url, one_model_mb, affinity)
            try:
                phases.append(run_phase(api_url, workload, args.clients, args.steps, affinity))
            finally:
                for worker in workers:
                    worker.stop()
            p = phases[-1]
            print(
                f"affinity {'on ' if affinity else 'off'}: {p.jobs / p.seconds:6.2f} jobs/s  "
                f"hits {p.hits:3d}  misses {p.misses:3d}  "
                f"load {p.load_seconds / max(p.misses, 1):.3f} s per miss  "
                f"job {p.run_seconds:.3f} s from start to end",
                flush=True,
            )

    def rate(affinity: bool) -> float:
        chosen = [p for p in phases if p.affinity == affinity]
        return sum(p.jobs for p in chosen) / sum(p.seconds for p in chosen)

    def hit_rate(affinity: bool) -> float:
        chosen = [p for p in phases if p.affinity == affinity]
        return sum(p.hits for p in chosen) / sum(p.hits + p.misses for p in chosen)

    print(
        f"\n{args.jobs} jobs × {args.rounds} rounds, {len(MODELS)} models, {len(WORKERS)} workers with a "
        f"one-model cache, {args.clients} clients, {args.steps} steps at 64×64"
    )
    print(f"without affinity: {rate(False):6.2f} jobs/s  cache hit rate {hit_rate(False):.0%}")
    print(f"with affinity   : {rate(True):6.2f} jobs/s  cache hit rate {hit_rate(True):.0%}")
    print(f"ratio (with / without): {rate(True) / rate(False):.3f}")
    shutil.rmtree(TMP, ignore_errors=True)  # kept, with the workers' logs, when a run fails


if __name__ == "__main__":
    main()
