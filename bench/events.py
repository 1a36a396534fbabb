"""Live events: how fast a step reaches an SSE client, what 200 clients cost the API, and how many
Postgres queries a running job makes per second with and without the event stream.

    .venv/bin/python bench/events.py [--jobs 20] [--clients 200] [--seconds 10] [--rate 20] [--baseline main]

Needs the machine's Postgres and Redis; uses its own database (diffq_bench_events) and Redis db 15
(DIFFQ_BENCH_REDIS_DB to change it). The API runs as its own process (uvicorn, one worker) so that
its CPU time can be read from /proc. The SSE clients (httpx, httpx-sse) are spread over
`--client-processes` processes: 200 clients in one process are its bottleneck, and its GIL would
delay the workers too. The "workers" are threads of this process running the real progress path
(core/progress.py's ProgressReporter with core/events.py's JobEvents: the Redis publish and cancel
check per step, the coalesced Postgres write) at `--rate` steps a second each; no model runs, so the
numbers are the event path's alone. Latency is the client's receive time minus the `ts` the worker
stamped on the step (one clock: same machine); it is given for every live event and for those
published once all the clients had connected (the connection burst aside). A failed connection is
one that got an error, a status other than 200, or an end of stream while its job still ran.
`--baseline REF` serves the API from git REF too (extracted to a temporary folder; the workers' side
is this checkout's) and runs each scenario on both, one API process at a time, side by side.
"""

import argparse
import asyncio
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TMP = Path(tempfile.mkdtemp(prefix="diffq-bench-events-"))
REDIS_DB = os.environ.get("DIFFQ_BENCH_REDIS_DB", "15")
os.environ.update(
    {
        "DIFFQ_HOME": str(TMP),
        "DIFFQ_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/diffq_bench_events",
        "DIFFQ_BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
        "DIFFQ_RATE_LIMIT": "1000000/second",
    }
)


def bigger_pool(size: int) -> None:
    """One connection per simulated worker thread (a real worker process has its own)."""
    from functools import lru_cache

    from sqlalchemy import create_engine

    import core.db
    from core.config import get_settings

    engine = create_engine(get_settings().database_url, pool_size=size, pool_pre_ping=True)
    core.db.get_engine = lru_cache(lambda: engine)
    core.db.get_sessionmaker.cache_clear()


def setup() -> str:
    from core.auth import create_key
    from core.db import db_session
    from tests.utils.services import fresh_database

    fresh_database("diffq_bench_events")
    with db_session() as session:
        return create_key(session, "bench", None, {})[1]


def running_jobs(count: int) -> list[uuid.UUID]:
    from core.db import db_session
    from core.tables import Job, JobStatus

    with db_session() as session:
        jobs = [
            Job(type="text2img", model="m", params={}, status=JobStatus.RUNNING, owner="bench", attempts=1)
            for _ in range(count)
        ]
        session.add_all(jobs)
    return [job.id for job in jobs]


def run_steps(job_id: uuid.UUID, steps: int, rate: float, with_events: bool, stop: threading.Event) -> None:
    """The worker's progress path for one job: `steps` steps at `rate` a second."""
    from core.config import get_settings
    from core.db import db_session
    from core.events import JobEvents, get_event_store
    from core.progress import ProgressReporter

    settings = get_settings()
    with db_session() as session:
        reporter = ProgressReporter(
            job_id,
            1,
            steps,
            settings.progress_min_interval_s,
            check_interval_s=settings.cancel_check_interval_s,
            session=session,
            events=JobEvents(get_event_store(), job_id) if with_events else None,
        )
        reporter.flush()
        started = time.monotonic()
        for step in range(1, steps + 1):
            if stop.is_set():
                return
            time.sleep(max(0.0, started + step / rate - time.monotonic()))
            reporter.update(step)


def queries_per_job_second(rate: float, seconds: float, with_events: bool) -> float:
    """Postgres statements one running job makes per second on the progress path."""
    from sqlalchemy import event

    from core.db import get_engine

    [job_id] = running_jobs(1)
    count = [0]

    def counted(*_: object) -> None:
        count[0] += 1

    event.listen(get_engine(), "before_cursor_execute", counted)
    started = time.monotonic()
    run_steps(job_id, int(rate * seconds), rate, with_events, threading.Event())
    elapsed = time.monotonic() - started
    event.remove(get_engine(), "before_cursor_execute", counted)
    return count[0] / elapsed


async def clients(
    api_url: str, key: str, job_ids: list[uuid.UUID], seconds: float
) -> tuple[list[tuple[float, float]], Counter[str], float, list[float]]:
    """One SSE client per job id in `job_ids` (a job may come more than once), for `seconds`: each
    live progress event's (publish time, latency in seconds), why connections failed (an error, a
    status other than 200, or a stream that the server ended while its job still ran) counted by
    reason, when the last of them connected, and how long each took to connect (request to response
    headers, seconds)."""
    import httpx
    from httpx_sse import aconnect_sse

    latencies: list[tuple[float, float]] = []
    connected_at = [0.0]
    connect_s: list[float] = []
    failed: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=len(job_ids) + 10)
    async with httpx.AsyncClient(
        base_url=api_url, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=None
    ) as http:

        async def one(job_id: uuid.UUID) -> None:
            import json

            try:
                started = time.time()
                async with aconnect_sse(http, "GET", f"/v1/jobs/{job_id}/events") as source:
                    if source.response.status_code != 200:
                        failed[f"HTTP {source.response.status_code}"] += 1
                        return
                    connected = time.time()
                    connect_s.append(connected - started)
                    connected_at[0] = max(connected_at[0], connected)
                    async for sse in source.aiter_sse():
                        if sse.event == "progress":
                            published = json.loads(sse.data)["ts"]
                            if published >= connected:  # not the replay of what came before it connected
                                latencies.append((published, time.time() - published))
                failed["ended early"] += 1
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failed[type(error).__name__] += 1

        tasks = [asyncio.create_task(one(job_id)) for job_id in job_ids]
        await asyncio.sleep(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return latencies, failed, connected_at[0], connect_s


def client_process(
    api_url: str, key: str, job_ids: list[uuid.UUID], seconds: float
) -> tuple[list[tuple[float, float]], Counter[str], float, list[float], float]:
    """`clients` in a process of its own, and its CPU seconds."""
    started = time.process_time()
    return *asyncio.run(clients(api_url, key, job_ids, seconds)), time.process_time() - started


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(latencies: list[float]) -> str:
    """p50, p99 and max of `latencies` (seconds), in ms."""
    ms = [latency * 1000 for latency in latencies] or [float("nan")]
    return f"p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, max {max(ms):.1f} ms"


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else float("nan")


def scenario(
    label: str,
    api_url: str,
    key: str,
    api_pid: int,
    jobs: int,
    client_count: int,
    seconds: float,
    rate: float,
    processes: ProcessPoolExecutor,
    process_count: int,
) -> None:
    job_ids = running_jobs(jobs)
    stop = threading.Event()
    steps = int(rate * (seconds + 5))
    threads = [
        threading.Thread(target=run_steps, args=(job_id, steps, rate, True, stop)) for job_id in job_ids
    ]
    cpu_before, wall_before = cpu_seconds(api_pid), time.monotonic()
    own_before = cpu_seconds(os.getpid())
    for thread in threads:
        thread.start()
    streams = [job_ids[i % jobs] for i in range(client_count)]
    shares = [streams[p::process_count] for p in range(process_count) if streams[p::process_count]]
    results = [
        future.result()
        for future in [processes.submit(client_process, api_url, key, share, seconds) for share in shares]
    ]
    wall = time.monotonic() - wall_before
    cpu, own = (cpu_seconds(api_pid) - cpu_before) / wall, (cpu_seconds(os.getpid()) - own_before) / wall
    clients_cpu = sum(result[4] for result in results) / wall
    stop.set()
    for thread in threads:
        thread.join()
    latencies = [pair for result in results for pair in result[0]]
    failed = sum((result[1] for result in results), Counter())
    all_connected = max(result[2] for result in results)
    steady = [latency for published, latency in latencies if published >= all_connected]
    connects = [seconds for result in results for seconds in result[3]]
    print(
        f"{label}: {jobs} jobs × {rate:g} steps/s, {client_count} SSE clients, {seconds:g} s: "
        f"{len(latencies)} events received, step → client {summary([lat for _, lat in latencies])}; "
        f"once all were connected ({len(steady)} events) {summary(steady)}; connecting took "
        f"{summary(connects)}; "
        f"API CPU {cpu * 100:.0f} % of one core (the bench's workers {own * 100:.0f} %, its clients "
        f"{clients_cpu * 100:.0f} %); failed connections {sum(failed.values())}"
        f"{' ' + str(dict(failed)) if failed else ''}",
        flush=True,
    )


@contextmanager
def api_process(root: Path) -> Iterator[tuple[str, int]]:
    """The API served from the checkout `root` (uvicorn, one worker): (its URL, its pid)."""
    import httpx

    from cli.quickstart import free_port

    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port), "--log-level", "warning"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    api_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{api_url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API in {root} did not start")
            time.sleep(0.2)
        yield api_url, api.pid
    finally:
        api.terminate()
        api.wait(10)


def checkout(ref: str) -> Path:
    """The tree of git `ref` of this repository, extracted into a temporary folder."""
    folder = TMP / f"baseline-{re.sub(r'[^A-Za-z0-9._-]', '_', ref)}"
    folder.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=20, help="steps a second per job")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also serve the API from git REF (e.g. main) and run each scenario on it, side by side",
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=4,
        help="processes the SSE clients are spread over (so that they don't measure their own GIL)",
    )
    args = parser.parse_args()

    key = setup()
    bigger_pool(args.jobs + 5)
    roots = {"this checkout": ROOT}
    if args.baseline:
        roots = {args.baseline: checkout(args.baseline), **roots}

    before = queries_per_job_second(args.rate, 5, with_events=False)
    after = queries_per_job_second(args.rate, 5, with_events=True)
    print(
        f"Postgres statements per running job per second at {args.rate:g} steps/s (progress path; "
        f"the lease renewal adds 1 per 20 s): before (status reads every 0.1 s) {before:.1f}, "
        f"after (Redis) {after:.1f}",
        flush=True,
    )
    with ProcessPoolExecutor(args.client_processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(time.sleep, [0.5] * args.client_processes))  # started before any scenario
        for clients_count, jobs in ((1, 1), (args.clients, args.jobs)):
            for label, root in roots.items():
                with api_process(root) as (api_url, pid):
                    scenario(
                        label,
                        api_url,
                        key,
                        pid,
                        jobs,
                        clients_count,
                        args.seconds,
                        args.rate,
                        pool,
                        args.client_processes,
                    )


if __name__ == "__main__":
    main()
