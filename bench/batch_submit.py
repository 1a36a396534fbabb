"""How fast a batch of 10,000 jobs is accepted, against writing the jobs one ORM row at a time.

(a) baseline, in this process: validate each spec, `session.add` + `flush` per row, one commit, then
    one `send_task` per job (what a loop over POST /v1/jobs's code would do, minus HTTP);
(b) POST /v1/batches over HTTP with the 10,000 specs as JSON: the time until the 201 (validation, one
    COPY on Postgres, commit), and how many messages reached Redis (wake-ups, sent after the response:
    one per live worker that serves the queue, and one when none is known, as here);
(c) the same batch as a JSON Lines upload, and as a template with a 100 × 100 sweep.

Also times the INSERT alone, per-row flush against `insert_batch` (one COPY), in the same process. No
worker runs: jobs stay queued. Needs the machine's Postgres and Redis; uses its own database and Redis db
(DIFFQ_BENCH_DB, default diffq_bench_batch; DIFFQ_BENCH_REDIS_DB, default 14).

Each POST is timed `--repeat` times (the jobs emptied in between) and its median reported: the machine
is shared, and one try can be twice another.

    .venv/bin/python bench/batch_submit.py [--jobs 10000] [--repeat 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TMP = Path(tempfile.mkdtemp(prefix="diffq-bench-batch-"))
DB = os.environ.get("DIFFQ_BENCH_DB", "diffq_bench_batch")
REDIS_DB = int(os.environ.get("DIFFQ_BENCH_REDIS_DB", "14"))
QUEUE = "diffq-bench-batch"
os.environ.update(
    {
        "DIFFQ_HOME": str(TMP),
        "DIFFQ_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}",
        "DIFFQ_BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "DIFFQ_QUEUE": QUEUE,
        "TOKENIZERS_PARALLELISM": "false",
    }
)


def spec(index: int) -> dict:
    return {
        "type": "text2img",
        "model": "tiny-sd",
        "params": {
            "prompt": f"a squirrel in Picasso style, take {index}",
            "num_inference_steps": 20,
            "width": 64,
            "height": 64,
            "seed": index,
            "scheduler": "euler_a",
        },
    }


def reset() -> None:
    """Empty the jobs, batches and the bench queue between runs."""
    import redis
    from sqlalchemy import text

    from core.db import get_engine

    with get_engine().begin() as conn:
        conn.execute(text("TRUNCATE jobs, batches CASCADE"))
    redis.Redis.from_url(os.environ["DIFFQ_BROKER_URL"]).delete(QUEUE)


def messages_after_batch(settle_s: float = 1.0) -> int:
    """The messages in the bench queue once the API's background wake-ups have gone out."""
    import redis

    time.sleep(settle_s)
    return redis.Redis.from_url(os.environ["DIFFQ_BROKER_URL"]).llen(QUEUE)


def accept_seconds(http, repeat: int, url: str, **kwargs) -> tuple[float, float]:
    """The median seconds until POST `url` answers 201 over `repeat` tries (the jobs emptied after each),
    and the median CPU seconds this process (the API and the client, not Postgres) spent on one: on a
    machine shared with other work, the CPU seconds vary less than the wall-clock ones."""
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        response = http.post(url, **kwargs)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        assert response.status_code == 201, response.text[:1000]
        reset()
    return statistics.median(times), statistics.median(cpu)


def naive(specs: list[dict]) -> tuple[float, float]:
    """Seconds to write the rows one flush at a time, and then to send their messages one by one."""
    from core.db import db_session
    from core.queue import send_wakeup
    from core.scheduling import Waiting
    from core.specs import JOB_SPEC
    from core.tables import Job

    start = time.perf_counter()
    with db_session() as session:
        ids = []
        for raw in specs:
            parsed = JOB_SPEC.validate_python(raw)
            job = Job(type=parsed.type, model=parsed.model, params=parsed.params.model_dump(mode="json"))
            session.add(job)
            session.flush()
            ids.append(job.id)
    written = time.perf_counter() - start
    start = time.perf_counter()
    for job_id in ids:
        send_wakeup(QUEUE, Waiting(job_id, QUEUE, "text2img", "tiny-sd"))
    return written, time.perf_counter() - start


def insert_only(specs: list[dict]) -> tuple[float, float]:
    """Seconds for the INSERT and commit alone: per-row ORM flush, then `insert_batch` (one COPY)."""
    from core.batches import insert_batch
    from core.db import db_session
    from core.tables import Job

    rows = [{"type": s["type"], "model": s["model"], "params": s["params"]} for s in specs]
    start = time.perf_counter()
    with db_session() as session:
        for row in rows:
            session.add(Job(**row))
            session.flush()
    per_row = time.perf_counter() - start
    reset()
    start = time.perf_counter()
    with db_session() as session:
        insert_batch(session, None, {"source": "bench"}, rows, "bench")
    return per_row, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3, help="tries per POST; the median is reported")
    args = parser.parse_args()

    import httpx

    from cli.quickstart import free_port, start_api
    from tests.utils.services import fresh_database, use_new_api_key

    # In a process of its own: torch's objects in this one, where the API runs, would make every garbage
    # collection during a batch scan them too, which `diffq api` (no torch) never does.
    make = "from core.config import get_settings; from models_store.tiny import make_tiny_models; "
    make += "make_tiny_models(get_settings().models_dir)"
    subprocess.run([sys.executable, "-c", make], check=True, cwd=ROOT, capture_output=True)
    fresh_database(DB)
    reset()
    use_new_api_key("bench", max_queued_jobs=0, rate_limit="1000000/second")
    port = free_port()
    start_api(port)
    http = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        timeout=600,
        headers={"Authorization": f"Bearer {os.environ['DIFFQ_API_KEY']}"},
    )
    specs = [spec(i) for i in range(args.jobs)]
    n = args.jobs

    written, sent = naive(specs)
    reset()

    response = http.post("/v1/batches", json={"jobs": specs})
    assert response.status_code == 201, response.text[:1000]
    messages = messages_after_batch()
    reset()
    accepted, accepted_cpu = accept_seconds(http, args.repeat, "/v1/batches", json={"jobs": specs})

    jsonl = "\n".join(json.dumps(s["params"]) for s in specs).encode()
    form = {"model": "tiny-sd", "type": "text2img"}
    accepted_jsonl, jsonl_cpu = accept_seconds(
        http, args.repeat, "/v1/batches/jsonl", files={"file": ("jobs.jsonl", jsonl)}, data=form
    )

    side = int(n**0.5)
    template = {"type": "text2img", "model": "tiny-sd", "params": {"num_inference_steps": 20, "width": 64}}
    sweep = {"prompt": [f"a squirrel, take {i}" for i in range(side)], "seed": list(range(side))}
    accepted_sweep, sweep_cpu = accept_seconds(
        http, args.repeat, "/v1/batches", json={"template": template, "sweep": sweep}
    )

    per_row, executemany = insert_only(specs)
    reset()

    naive_accept = written + sent
    print(f"{n} jobs, Postgres + Redis on this machine, API in this process; POSTs: median of {args.repeat}")
    print(f"baseline: per-row ORM insert + flush, commit  : {written:7.2f} s")
    print(f"baseline: then one send_task per job          : {sent:7.2f} s")
    print(f"POST /v1/batches (JSON): accepted (201)       : {accepted:7.2f} s ({accepted_cpu:.2f} s CPU)")
    print(f"POST /v1/batches (JSON): messages to Redis    : {messages:7d}")
    print(f"POST /v1/batches/jsonl: accepted              : {accepted_jsonl:7.2f} s ({jsonl_cpu:.2f} s CPU)")
    sweep_label = f"POST /v1/batches sweep {side}×{side}: accepted"
    print(f"{sweep_label:46s}: {accepted_sweep:7.2f} s ({sweep_cpu:.2f} s CPU)")
    print(f"INSERT alone: per-row flush {per_row:.2f} s, insert_batch (COPY) {executemany:.2f} s")
    print(f"ratio accept, baseline (insert + send) / batch: {naive_accept / accepted:7.1f}x")
    print(f"ratio accept, baseline (insert only) / batch  : {written / accepted:7.1f}x")
    print(f"ratio INSERT alone, per-row / insert_batch    : {per_row / executemany:7.1f}x")
    assert "torch" not in sys.modules, "torch was imported in the API's process"


if __name__ == "__main__":
    main()
