"""What the job system costs: the same text2img workload as a bare diffusers loop and as jobs.

(a) a bare loop: one process, the pipeline loaded once, one call per job;
(b) diffq: API → Redis → worker → storage, on a warm worker (one job run before timing).

Both run in this one process run, one after the other, on the tiny model (64×64, 20 steps).
Needs the machine's Postgres and Redis; uses its own database (diffq_bench) and Redis db 14.

    .venv/bin/python bench/overhead.py [--jobs 20]
"""

import argparse
import os
import sys
import tempfile
import time
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


def bare_loop(models_dir: Path, jobs: int) -> float:
    import torch
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(
        models_dir / "tiny-sd", dtype=torch.float32, use_safetensors=True
    )
    pipe.set_progress_bar_config(disable=True)
    params = {k: v for k, v in PARAMS.items() if k != "num_images"}
    pipe(**params, generator=torch.Generator("cpu").manual_seed(0))  # warm, like the worker
    start = time.perf_counter()
    for seed in range(jobs):
        pipe(**params, generator=torch.Generator("cpu").manual_seed(seed))
    return jobs / (time.perf_counter() - start)


def through_diffq(jobs: int) -> float:
    import psycopg
    import redis

    from cli.client import Client
    from cli.quickstart import free_port, start_api
    from migrations.run import upgrade
    from tests.utils.jobs import wait_finished
    from tests.utils.services import WorkerProcess

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS diffq_bench WITH (FORCE)")
        conn.execute("CREATE DATABASE diffq_bench")
    upgrade()
    redis.Redis.from_url(os.environ["DIFFQ_BROKER_URL"]).flushdb()
    port = free_port()
    start_api(port)
    worker = WorkerProcess(
        TMP / "worker.log", env={"DIFFQ_PUBLIC_URL": f"http://127.0.0.1:{port}"}, name="bench@%h"
    )
    worker.wait_ready()
    try:
        client = Client(f"http://127.0.0.1:{port}")
        warm = client.submit({"type": "text2img", "model": "tiny-sd", "params": PARAMS | {"seed": 0}})
        assert wait_finished(client, warm["id"])["status"] == "succeeded"
        start = time.perf_counter()
        ids = [
            client.submit({"type": "text2img", "model": "tiny-sd", "params": PARAMS | {"seed": s}})["id"]
            for s in range(jobs)
        ]
        for job_id in ids:
            assert wait_finished(client, job_id, timeout=600)["status"] == "succeeded"
        return jobs / (time.perf_counter() - start)
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()

    from core.config import get_settings
    from models_store.tiny import make_tiny_models

    models_dir = get_settings().models_dir
    make_tiny_models(models_dir)
    bare = bare_loop(models_dir, args.jobs)
    queued = through_diffq(args.jobs)
    print(f"bare diffusers loop : {bare:7.2f} jobs/s")
    print(f"API → Redis → worker: {queued:7.2f} jobs/s")
    print(f"ratio (diffq / bare): {queued / bare:7.3f}")


if __name__ == "__main__":
    main()
