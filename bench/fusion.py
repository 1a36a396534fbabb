"""What job fusion buys: images/s of `--jobs` compatible text2img jobs run one at a time and fused.

One worker process serves a batch of `--jobs` one-image text2img jobs on `--model` that differ only in
their prompts and seeds (so they share a fusion key, core/fusion.py). The batch runs twice, with
fusion off (`DIFFQ_FUSION=false`) and on (`DIFFQ_MAX_FUSED_IMAGES=--max-images`), each on a fresh
worker whose pipeline is loaded first by a warm-up job; the time is from the batch's submission to its
last job's end. It prints images/s of each, their ratio, and the largest difference between the two
runs' images of the same job (grey levels; fused images equal unfused ones up to the arithmetic's
order).

Needs the machine's Postgres and Redis; uses its own database (diffq_bench_fusion) and Redis db 10
(`DIFFQ_BENCH_REDIS_DB`). On a GPU, pass a real model and size (bench/gpu_check.sh does).

    .venv/bin/python bench/fusion.py [--jobs 64] [--steps 20] [--size 64] [--max-images 8] [--model tiny-sd]
"""

import argparse
import io
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TMP = Path(tempfile.mkdtemp(prefix="diffq-bench-fusion-"))
QUEUE = "diffq-bench-fusion"
os.environ.update(
    {
        "DIFFQ_HOME": str(TMP),
        "DIFFQ_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/diffq_bench_fusion",
        "DIFFQ_BROKER_URL": f"redis://127.0.0.1:6379/{os.environ.get('DIFFQ_BENCH_REDIS_DB', '10')}",
        "DIFFQ_STORAGE_URL": (TMP / "outputs").as_uri(),
        "DIFFQ_QUEUE": QUEUE,
        "TOKENIZERS_PARALLELISM": "false",
        # One torch thread: two on a 2-core machine shared with the benchmark's own process thrash.
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
)


def specs(count: int, model: str, steps: int, size: int) -> list[dict]:
    return [
        {
            "type": "text2img",
            "model": model,
            "params": {
                "prompt": f"a squirrel in the style of painter number {index}",
                "num_inference_steps": steps,
                "width": size,
                "height": size,
                "seed": 1000 + index,
                "num_images": 1,
            },
        }
        for index in range(count)
    ]


def submit(batch: list[dict]) -> uuid.UUID:
    """Write the batch and wake the worker, as POST /v1/batches does."""
    from core.batches import insert_batch
    from core.db import db_session
    from core.queue import wake_workers
    from core.scheduling import Waiting
    from core.specs import JOB_SPEC
    from core.submit import job_fields

    values = [job_fields(JOB_SPEC.validate_python(spec)) for spec in batch]
    with db_session() as session:
        batch_id, job_ids = insert_batch(session, None, {"source": "bench"}, values)
    with db_session() as session:
        wake_workers(
            session,
            [
                Waiting(job_id, QUEUE, "text2img", v["model"])
                for job_id, v in zip(job_ids, values, strict=True)
            ],
        )
    return batch_id


def wait_done(batch_id: uuid.UUID, timeout: float = 7200) -> list:
    from sqlalchemy import select

    from core.db import db_session
    from core.tables import Job

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db_session() as session:
            jobs = list(
                session.scalars(select(Job).where(Job.batch_id == batch_id).order_by(Job.batch_index))
            )
        if all(job.status in ("succeeded", "failed", "canceled") for job in jobs):
            failed = [job for job in jobs if job.status != "succeeded"]
            if failed:
                raise RuntimeError(f"{len(failed)} jobs did not succeed: {failed[0].error}")
            return jobs
        time.sleep(0.05)
    raise TimeoutError(f"batch {batch_id} did not finish in {timeout}s")


def run_phase(batch: list[dict], fused: bool, max_images: int) -> tuple[float, list, int]:
    """Seconds from submission to the last end, the jobs, and the most jobs one call ran."""
    from tests.utils.services import WorkerProcess

    env = {"DIFFQ_FUSION": str(fused).lower(), "DIFFQ_MAX_FUSED_IMAGES": str(max_images)}
    log = TMP / f"worker-{'fused' if fused else 'alone'}.log"
    worker = WorkerProcess(log, env=env, name=f"fusion-{'on' if fused else 'off'}@%h")
    try:
        worker.wait_ready()
        wait_done(submit(batch[:1]))  # loads the pipeline
        start = time.time()
        jobs = wait_done(submit(batch))
    finally:
        worker.stop()
    seconds = max(job.finished_at.timestamp() for job in jobs) - start
    # The jobs of one call were claimed together, and start at the same instant.
    calls = Counter(job.started_at for job in jobs)
    return seconds, jobs, max(calls.values())


def image(key: str):
    import numpy as np
    from PIL import Image

    from core.storage import get_storage

    return np.asarray(Image.open(io.BytesIO(get_storage().get(key)))).astype(int)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--max-images", type=int, default=8)
    parser.add_argument("--model", default="tiny-sd")
    args = parser.parse_args()

    import numpy as np
    import redis

    from core.config import get_settings
    from models_store.tiny import make_tiny_models
    from tests.utils.services import fresh_database

    make_tiny_models(get_settings().models_dir)
    fresh_database("diffq_bench_fusion")
    redis.Redis.from_url(os.environ["DIFFQ_BROKER_URL"]).flushdb()
    batch = specs(args.jobs, args.model, args.steps, args.size)
    alone_s, alone, _ = run_phase(batch, False, args.max_images)
    print(f"one at a time: {args.jobs / alone_s:7.2f} images/s ({alone_s:.2f} s)", flush=True)
    fused_s, fused, largest = run_phase(batch, True, args.max_images)
    print(
        f"fused        : {args.jobs / fused_s:7.2f} images/s ({fused_s:.2f} s; calls of up to {largest} jobs)"
    )
    diff = max(
        int(np.abs(image(a.outputs[0]["key"]) - image(b.outputs[0]["key"])).max())
        for a, b in zip(alone, fused, strict=True)
    )
    print(
        f"\n{args.jobs} one-image text2img jobs on {args.model}, {args.steps} steps at "
        f"{args.size}×{args.size}, one worker, at most {args.max_images} images a call"
    )
    print(
        f"ratio (fused / one at a time): {alone_s / fused_s:.2f}x images/s; largest pixel difference {diff}"
    )


if __name__ == "__main__":
    main()
