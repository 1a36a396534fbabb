"""What the job system costs: the same text2img workload as a bare diffusers loop and as jobs.

(a) a bare loop: this process, the pipeline loaded once, one call per job;
(b) diffq: API → Redis → worker → storage, on a warm worker (one job run before timing).

Both run in this one process run on the tiny model (64×64, `--steps` steps), in alternating rounds so
that other load on the machine falls on both alike. The worker runs with fusion off
(`DIFFQ_FUSION=false`), so that every job is a call of its own as in the bare loop: the difference is
the job system's overhead per job. Needs the machine's Postgres and Redis; uses its own database
(diffq_bench) and Redis db 14.

    .venv/bin/python bench/overhead.py [--jobs 20] [--rounds 4] [--steps 20]
"""

import argparse
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TMP = Path(tempfile.mkdtemp(prefix="diffq-bench-"))
os.environ.update(
    {
        "DIFFQ_HOME": str(TMP),
        "DIFFQ_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/diffq_bench",
        "DIFFQ_BROKER_URL": "redis://127.0.0.1:6379/14",
        "DIFFQ_QUEUE": "diffq-bench",
        "DIFFQ_FUSION": "false",
        "TOKENIZERS_PARALLELISM": "false",
    }
)

PARAMS = {
    "prompt": "a squirrel in Picasso style",
    "num_inference_steps": 20,
    "guidance_scale": 7.5,
    "width": 64,
    "height": 64,
    "num_images": 1,
}


def load_bare_pipeline(models_dir: Path):
    import torch
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(
        models_dir / "tiny-sd", dtype=torch.float32, use_safetensors=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_round(pipe, seeds: range) -> float:
    """Seconds for one call per seed."""
    import torch

    params = {k: v for k, v in PARAMS.items() if k != "num_images"}
    start = time.perf_counter()
    for seed in seeds:
        pipe(**params, generator=torch.Generator("cpu").manual_seed(seed))
    return time.perf_counter() - start


def diffq_round(client, seeds: range) -> tuple[float, list[float]]:
    """Seconds from the first submission to the last finish (server clock), and per-job hold times."""
    from tests.utils.jobs import wait_finished

    ids = [
        client.submit({"type": "text2img", "model": "tiny-sd", "params": PARAMS | {"seed": s}})["id"]
        for s in seeds
    ]
    # Poll slowly: the poller shares the CPU with the worker being measured.
    done = [wait_finished(client, job_id, timeout=600, poll_s=0.5) for job_id in ids]
    assert all(job["status"] == "succeeded" for job in done), [job["error"] for job in done]
    at = {key: [datetime.fromisoformat(job[key]) for job in done] for key in done[0] if key.endswith("_at")}
    elapsed = (max(at["finished_at"]) - min(at["created_at"])).total_seconds()
    held = [(f - s).total_seconds() for s, f in zip(at["started_at"], at["finished_at"], strict=True)]
    return elapsed, held


def start_stack():
    import psycopg
    import redis

    from cli.client import Client
    from cli.quickstart import free_port, start_api
    from migrations.run import upgrade
    from tests.utils.services import WorkerProcess, use_new_api_key

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS diffq_bench WITH (FORCE)")
        conn.execute("CREATE DATABASE diffq_bench")
    upgrade()
    redis.Redis.from_url(os.environ["DIFFQ_BROKER_URL"]).flushdb()
    use_new_api_key("bench", max_queued_jobs=0, rate_limit="1000000/second")
    port = free_port()
    start_api(port)
    worker = WorkerProcess(
        TMP / "worker.log", env={"DIFFQ_PUBLIC_URL": f"http://127.0.0.1:{port}"}, name="bench@%h"
    )
    worker.wait_ready()
    return Client(f"http://127.0.0.1:{port}"), worker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    PARAMS["num_inference_steps"] = args.steps

    from core.config import get_settings
    from models_store.tiny import make_tiny_models

    models_dir = get_settings().models_dir
    make_tiny_models(models_dir)
    pipe = load_bare_pipeline(models_dir)
    client, worker = start_stack()
    try:
        bare_round(pipe, range(1))  # warm both sides alike
        diffq_round(client, range(1))
        per_round = args.jobs // args.rounds
        bare_s = diffq_s = 0.0
        held: list[float] = []
        for r in range(args.rounds):
            seeds = range(r * per_round, (r + 1) * per_round)
            bare_s += bare_round(pipe, seeds)
            elapsed, round_held = diffq_round(client, seeds)
            diffq_s += elapsed
            held += round_held
    finally:
        worker.stop()
    jobs = per_round * args.rounds
    bare, queued = jobs / bare_s, jobs / diffq_s
    print(f"bare diffusers loop : {bare:7.2f} jobs/s ({1000 / bare:6.1f} ms a job)")
    print(f"API → Redis → worker: {queued:7.2f} jobs/s ({1000 / queued:6.1f} ms a job)")
    print(f"  of which a worker held each job {1000 * sum(held) / len(held):6.1f} ms on average")
    print(f"overhead per job (diffq - bare): {1000 / queued - 1000 / bare:6.1f} ms at {args.steps} steps")
    print(f"ratio (diffq / bare): {queued / bare:7.3f}")


if __name__ == "__main__":
    main()
