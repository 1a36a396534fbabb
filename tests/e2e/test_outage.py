"""A database outage delays jobs and never loses them.

Everything runs on servers of the test's own, since the test stops the database: a Postgres started with
`initdb`/`pg_ctl` on a spare port, a private redis-server, and the API, a beat and two workers as real
processes. While Postgres is stopped, one worker is running a job and the other takes the wake-ups of five
queued jobs; the API is polled all along.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from cli.client import Client
from cli.quickstart import free_port
from migrations.run import upgrade
from tests.utils.jobs import text2img_spec, wait_finished
from tests.utils.services import ROOT, PrivatePostgres, WorkerProcess, start_redis, wait_for, wait_http

QUEUE = "diffq-test-outage"
OUTAGE_S = 10


@dataclass
class Outage:
    postgres: PrivatePostgres
    api_url: str
    workers: dict[str, WorkerProcess]
    tmp: Path

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")


def process(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env=os.environ | env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@pytest.fixture(scope="module")
def outage(models_dir, s3, tmp_path_factory) -> Iterator[Outage]:
    tmp = tmp_path_factory.mktemp("outage")
    postgres = PrivatePostgres()
    postgres.start()
    admin = postgres.server_url.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE DATABASE diffq")
    database = f"{postgres.server_url}/diffq"
    upgrade(database_url=database)
    redis_url, redis_server = start_redis(tmp / "redis.log")
    port = free_port()
    env = {
        "DIFFQ_DATABASE_URL": database,
        "DIFFQ_BROKER_URL": redis_url,
        "DIFFQ_QUEUE": QUEUE,
        "DIFFQ_IDLE_POLL_S": "0.5",
        "DIFFQ_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "DIFFQ_AUTH": "false",  # a database of its own holds no API keys
    }
    api = process(["api", "--port", str(port)], tmp / "api.log", env)
    beat = process(
        ["beat", "--loglevel", "INFO"], tmp / "beat.log", env | {"DIFFQ_RECONCILE_INTERVAL_S": "1"}
    )
    workers = {
        name: WorkerProcess(tmp / f"{name}.log", env=env, name=f"{name}@%h", queues=QUEUE) for name in "ab"
    }
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        for worker in workers.values():
            worker.wait_ready(timeout=180)
        yield Outage(postgres, f"http://127.0.0.1:{port}", workers, tmp)
    finally:
        for worker in workers.values():
            if worker.process.poll() is None:
                os.killpg(worker.process.pid, signal.SIGCONT)
            worker.stop()
        for server in (api, beat, redis_server):
            server.terminate()
            server.wait(timeout=30)
        postgres.remove()


def test_postgres_stopped_and_started_again_every_job_succeeds_once(outage) -> None:
    client = Client(outage.api_url)
    long_job = client.submit(text2img_spec(num_inference_steps=300, num_images=1))["id"]
    wait_for(lambda: (client.job(long_job)["progress"] or {}).get("step", 0) >= 1, 120, "the long job to run")
    idle = "b" if client.job(long_job)["worker"].startswith("a@") else "a"
    # The idle worker is frozen while the five jobs are submitted, so that their wake-ups wait for it.
    os.killpg(outage.workers[idle].process.pid, signal.SIGSTOP)
    queued = [
        client.submit(text2img_spec(num_inference_steps=3, num_images=1, seed=s))["id"] for s in range(5)
    ]

    outage.postgres.stop()
    os.killpg(outage.workers[idle].process.pid, signal.SIGCONT)
    answers: list[httpx.Response] = []
    down_until = time.monotonic() + OUTAGE_S
    with httpx.Client(base_url=outage.api_url, timeout=30) as http:
        while time.monotonic() < down_until:
            answers.append(http.get(f"/v1/jobs/{queued[0]}"))
            time.sleep(0.05)
    outage.postgres.start()

    assert answers and {response.status_code for response in answers} == {503}
    assert all(response.headers["retry-after"].isdigit() for response in answers)
    assert "the database is unreachable" in answers[0].json()["detail"]
    # The idle worker took the wake-ups during the outage, could not claim, and gave them back.
    assert "the database is unreachable" in outage.log(idle) and "giving the wake-up for job" in outage.log(
        idle
    )

    jobs = [wait_finished(client, job_id, timeout=300) for job_id in [long_job, *queued]]
    assert [(job["status"], job["attempts"]) for job in jobs] == [("succeeded", 1)] * 6
    logs = outage.log("a") + outage.log("b")
    for job in jobs:
        assert logs.count(f"job {job['id']} succeeded") == 1
        assert len(job["outputs"]) == 1
