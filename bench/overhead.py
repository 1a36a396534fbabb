"""What the job system costs: the same text2img workload as a bare diffusers loop and as jobs.

(a) a bare loop: this process, the pipeline loaded once, one call per job;
(b) diffq: API → Redis → worker → storage, on a warm worker (one job run before timing), in two ways:
    - one by one: the jobs submitted one request each, timed from the first submission to the last
      finish (what a client sees, the API's time included);
    - a backlog: the jobs submitted as one batch, timed from the first job's start to the last one's
      finish (the worker's own time per job: the issue's "worker-side time per job outside the
      diffusers call" is this minus the bare call, here with the API, Postgres and Redis on the same
      cores; the worker also logs its own time outside the pipeline calls, which the report averages).

Both run in this one process run on the tiny model (64×64, `--steps` steps), in alternating rounds so
that other load on the machine falls on both alike. The worker runs with fusion off
(`DIFFQ_FUSION=false`), so that every job is a call of its own as in the bare loop: the difference is
the job system's overhead per job. Needs the machine's Postgres and Redis; uses its own database
(diffq_bench, or `DIFFQ_BENCH_DB`) and Redis db 14 (or `DIFFQ_BENCH_REDIS_DB`).

With `--baseline DIR` (a checkout of another revision, e.g. `git archive <rev> | tar -x -C DIR`), each
round also runs the jobs on a worker started from DIR's code, on the same API, database and Redis: the
two workers take turns (each started for its round, warmed with one job, and stopped), so both see the
same load, and the report puts them side by side.

    .venv/bin/python bench/overhead.py [--jobs 20] [--rounds 4] [--steps 20] [--baseline DIR]
"""

import argparse
import os
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TMP = Path(tempfile.mkdtemp(prefix="diffq-bench-"))
BENCH_DB = os.environ.get("DIFFQ_BENCH_DB", "diffq_bench")
os.environ.update(
    {
        "DIFFQ_HOME": str(TMP),
        "DIFFQ_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{BENCH_DB}",
        "DIFFQ_BROKER_URL": f"redis://127.0.0.1:6379/{os.environ.get('DIFFQ_BENCH_REDIS_DB', '14')}",
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


def diffq_round(client, seeds: range, backlog: bool = False) -> tuple[float, list[float]]:
    """Seconds from the first submission to the last finish (server clock), or with `backlog` (the jobs
    submitted as one batch) from the first start to the last finish; and per-job hold times."""
    from tests.utils.jobs import wait_finished

    specs = [{"type": "text2img", "model": "tiny-sd", "params": PARAMS | {"seed": s}} for s in seeds]
    if backlog:
        batch = client.submit_batch({"jobs": specs})
        ids = [job["id"] for job in client.jobs(batch_id=batch["id"], limit=1000)["data"]]
    else:
        ids = [client.submit(spec)["id"] for spec in specs]
    # Poll slowly: the poller shares the CPU with the worker being measured.
    done = [wait_finished(client, job_id, timeout=600, poll_s=0.5) for job_id in ids]
    assert all(job["status"] == "succeeded" for job in done), [job["error"] for job in done]
    at = {key: [datetime.fromisoformat(job[key]) for job in done] for key in done[0] if key.endswith("_at")}
    elapsed = (max(at["finished_at"]) - min(at["started_at" if backlog else "created_at"])).total_seconds()
    held = [(f - s).total_seconds() for s, f in zip(at["started_at"], at["finished_at"], strict=True)]
    return elapsed, held


# Per variant, from its worker's log: (jobs, ms a job outside the pipeline calls) of each backlog task.
OUTSIDE: dict[str, list[tuple[int, float]]] = {}
TASK_LINE = re.compile(r"task ran (\d+) jobs in [\d.]+s; outside the pipeline calls: ([\d.]+) ms a job")


def outside_calls(log_path: Path, offset: int) -> list[tuple[int, float]]:
    """What the worker's tasks logged after `offset` of their time outside the pipeline calls (a revision
    that does not log it gives nothing)."""
    with log_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return [(int(jobs), float(ms)) for jobs, ms in TASK_LINE.findall(text)]


def start_stack():
    import redis

    from cli.client import Client
    from cli.quickstart import free_port, start_api
    from tests.utils.services import fresh_database, use_new_api_key

    fresh_database(BENCH_DB)
    redis.Redis.from_url(os.environ["DIFFQ_BROKER_URL"]).flushdb()
    use_new_api_key("bench", max_queued_jobs=0, rate_limit="1000000/second")
    port = free_port()
    start_api(port)
    return Client(f"http://127.0.0.1:{port}"), {"DIFFQ_PUBLIC_URL": f"http://127.0.0.1:{port}"}


def start_worker(env: dict[str, str], name: str, root: Path = ROOT):
    from tests.utils.services import WorkerProcess

    worker = WorkerProcess(TMP / f"{name}.log", env=env, name=f"{name}@%h", root=root)
    worker.wait_ready()
    return worker


def timed_rounds(client, env, variants: dict[str, Path], pipe, args) -> dict[str, tuple[float, list[float]]]:
    """Per variant ("bare", and per checkout a worker fed one by one and one fed a backlog, "<name>
    backlog"): seconds for all rounds, and per-job hold times."""
    per_round = args.jobs // args.rounds
    names = ["bare", *variants, *(f"{name} backlog" for name in variants)]
    totals: dict[str, tuple[float, list[float]]] = {name: (0.0, []) for name in names}
    bare_round(pipe, range(1))  # warm
    for r in range(args.rounds):
        seeds = range(r * per_round, (r + 1) * per_round)
        totals["bare"] = (totals["bare"][0] + bare_round(pipe, seeds), [])
        for name, root in variants.items():
            worker = start_worker(env, name, root)
            try:
                diffq_round(client, range(1000 + r, 1001 + r))  # warm: the model loaded
                for key, backlog in ((name, False), (f"{name} backlog", True)):
                    logged = worker.log_path.stat().st_size
                    elapsed, held = diffq_round(client, seeds, backlog)
                    seconds, all_held = totals[key]
                    totals[key] = (seconds + elapsed, all_held + held)
                    if backlog:
                        OUTSIDE.setdefault(name, []).extend(outside_calls(worker.log_path, logged))
            finally:
                worker.stop()
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--baseline", type=Path, help="a checkout of another revision, run side by side")
    args = parser.parse_args()
    PARAMS["num_inference_steps"] = args.steps

    from core.config import get_settings
    from models_store.tiny import make_tiny_models

    models_dir = get_settings().models_dir
    make_tiny_models(models_dir)
    pipe = load_bare_pipeline(models_dir)
    client, env = start_stack()
    variants = {"diffq": ROOT} if args.baseline is None else {"baseline": args.baseline, "diffq": ROOT}
    totals = timed_rounds(client, env, variants, pipe, args)
    jobs = args.jobs // args.rounds * args.rounds
    bare = jobs / totals["bare"][0]
    print(f"{args.steps} steps, {jobs} jobs in {args.rounds} rounds")
    print(f"bare diffusers loop : {bare:7.2f} jobs/s ({1000 / bare:6.1f} ms a job)")
    for name in variants:
        seconds, held = totals[name]
        queued = jobs / seconds
        print(f"{name:>9}: one by one, API → Redis → worker: {queued:7.2f} jobs/s", end="")
        print(f" ({1000 / queued:6.1f} ms a job)")
        print(f"  of which a worker held each job {1000 * sum(held) / len(held):6.1f} ms on average")
        print(f"  overhead per job (diffq - bare): {1000 / queued - 1000 / bare:6.1f} ms")
        print(f"  ratio (diffq / bare): {queued / bare:7.3f}")
        seconds, _held = totals[f"{name} backlog"]
        drained = jobs / seconds
        print(f"{name:>9}: a backlog, first start to last finish: {drained:7.2f} jobs/s", end="")
        print(f" ({1000 / drained:6.1f} ms a job)")
        print(f"  worker-side overhead per job (diffq - bare): {1000 / drained - 1000 / bare:6.1f} ms")
        if tasks := OUTSIDE.get(name):
            mean = sum(jobs * ms for jobs, ms in tasks) / sum(jobs for jobs, _ in tasks)
            print(f"  the worker's time outside the pipeline calls (its log): {mean:6.1f} ms a job")
        print(f"  ratio (diffq / bare): {drained / bare:7.3f}")


if __name__ == "__main__":
    main()
