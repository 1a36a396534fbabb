"""`diffq flower`: Flower on the configured broker, behind basic auth, showing which job each task runs."""

import os
import socket
import subprocess
import sys

import httpx
import pytest

from cli.quickstart import free_port
from tests.utils.jobs import text2img_spec, wait_finished
from tests.utils.services import ROOT, running_flower, wait_for

AUTH = ("flower-admin", "flower-secret")


def test_flower_refuses_to_start_without_credentials() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIFFQ_FLOWER_")}
    result = subprocess.run(
        [sys.executable, "-m", "cli", "flower", "--port", str(free_port())],
        cwd=ROOT,
        env=env | {"COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "DIFFQ_FLOWER_USER and DIFFQ_FLOWER_PASSWORD" in result.stderr


@pytest.fixture(scope="module")
def flower(stack):
    with running_flower(stack.tmp, AUTH) as url:
        yield url


def test_flower_asks_for_basic_auth(flower: str) -> None:
    assert httpx.get(flower).status_code == 401
    assert httpx.get(flower, auth=("flower-admin", "wrong")).status_code == 401
    assert httpx.get(flower, auth=AUTH).status_code == 200


def test_flower_shows_the_job_behind_each_task(flower: str, client) -> None:
    worker = f"main@{socket.gethostname()}"

    def sees_the_worker() -> bool:  # Flower has subscribed to the workers' events
        workers = httpx.get(f"{flower}/workers", params={"json": 1}, auth=AUTH).json()["data"]
        return any(w.get("hostname") == worker for w in workers)

    wait_for(sees_the_worker, 60, "Flower to receive the worker's events", interval=0.5)
    job = client.submit(text2img_spec(num_inference_steps=2, num_images=1))
    assert wait_finished(client, job["id"])["status"] == "succeeded"

    def task_of_the_job() -> dict | None:
        tasks = httpx.get(f"{flower}/api/tasks", auth=AUTH).json()
        return next((t for t in tasks.values() if job["id"] in (t.get("args") or "")), None)

    task = wait_for(task_of_the_job, 30, "the job's task in Flower", interval=0.5)
    assert task["name"] == "diffq.run_job"
    assert task["args"] == repr([job["id"]])
    assert "'type': 'text2img'" in task["kwargs"] and "'model': 'tiny-sd'" in task["kwargs"]
    assert task["state"] == "SUCCESS"
    # The job it ran, whose outputs the worker then stores off the task (workers/finisher.py).
    assert f"job {job['id']}: storing outputs" in task["result"]
    assert task["worker"] == worker
