"""A task runs a backlog (workers/tasks.py `run_job`): after each call it claims the next job itself, until
it finds none, a job fails (the task fails, naming every job it ran) or `TASK_RUNS_FOR_S` has passed.

Each test holds its backlog in a queue no worker serves, then moves it, whole, into a worker's queue and
sends one wake-up, so that the backlog is in place before the worker claims anything. The jobs differ in
their guidance scale, so that each runs as a call of its own (workers/fusion.py would otherwise run
them as one call): what runs them one after another is the task's loop. The worker is a real `diffq
worker` of the module's own, and Flower shows what each of its tasks ran.
"""

import io
import re
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select, update

from core.db import db_session
from core.queue import send_wakeup
from core.scheduling import Waiting
from core.storage import get_storage
from core.tables import Job, JobStatus, WorkerNode
from tests.utils.jobs import UNSERVED_QUEUE, submit_to_queue, text2img_spec, upload_image, wait_finished
from tests.utils.services import WorkerProcess, running_flower, wait_for
from workers.tasks import TASK_RUNS_FOR_S

LOOP_QUEUE = "diffq-test-loop"
STOP_QUEUE = "diffq-test-loop-stop"
HOST = socket.gethostname()
LOOP_WORKER = f"loop@{HOST}"
FLOWER_AUTH = ("flower-admin", "flower-secret")
# "job <uuid>: storing outputs, job <uuid>: canceled, job <uuid> failed: bad_input: …"
JOB_ID = re.compile(r"job ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b")


def quick(index: int, steps: int = 2) -> dict[str, Any]:
    """A quick text2img job of a call of its own: no other job of a backlog has its guidance scale."""
    return text2img_spec(num_inference_steps=steps, num_images=1, guidance_scale=5.0 + index / 8, seed=index)


def hold(specs: list[dict[str, Any]]) -> list[str]:
    """Write a job per spec, as the API would, in a queue no worker serves: oldest first."""
    return [submit_to_queue(UNSERVED_QUEUE, spec, wake=False) for spec in specs]


def release(job_ids: list[str], queue: str) -> None:
    """Move the held jobs into `queue` at once and send one wake-up, as a batch's submit would."""
    with db_session() as session:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(queue=queue))
        first = session.get_one(Job, uuid.UUID(job_ids[0]))
        waiting = Waiting(first.id, queue, first.type, first.model)
    send_wakeup(queue, waiting)


def jobs(job_ids: list[str]) -> list[Job]:
    with db_session() as session:
        found = {str(job.id): job for job in session.scalars(select(Job).where(Job.id.in_(job_ids)))}
        session.expunge_all()
    return [found[job_id] for job_id in job_ids]


def cancel_left_over(queue: str) -> None:
    with db_session() as session:
        session.execute(
            update(Job)
            .where(Job.queue == queue, Job.status == JobStatus.QUEUED)
            .values(status=JobStatus.CANCELED)
        )


def successes(log: str, job_id: str) -> int:
    """How many times the worker's log says it recorded `job_id` as succeeded."""
    return log.count(f"job {job_id} succeeded in attempt")


def log_with_ends(worker: WorkerProcess, job_ids: list[str]) -> str:
    """The worker's log, once it says that each of `job_ids` succeeded."""

    def read() -> str | None:
        log = worker.log_path.read_text(errors="replace")
        return log if all(successes(log, job_id) for job_id in job_ids) else None

    return wait_for(read, 30, "every job's end in the worker's log", interval=0.2)


def assert_succeeded_once(worker: WorkerProcess, jobs: list[dict[str, Any]]) -> None:
    """Each of `jobs` succeeded in its first attempt with its one image, and `worker` recorded it once."""
    assert [(job["status"], job["attempts"], len(job["outputs"])) for job in jobs] == [
        ("succeeded", 1, 1)
    ] * len(jobs)
    log = log_with_ends(worker, [job["id"] for job in jobs])
    assert [successes(log, job["id"]) for job in jobs] == [1] * len(jobs)


def named(task: dict[str, Any]) -> list[str]:
    """The jobs a task's outcome in Flower names (its result, or its exception's message), in its order."""
    return JOB_ID.findall((task.get("result") or "") + (task.get("exception") or ""))


def flower_tasks(flower: str, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The tasks of the loop worker that Flower has seen end and whose outcome names one of `job_ids`."""
    tasks = httpx.get(f"{flower}/api/tasks", auth=FLOWER_AUTH, timeout=10).json()
    return {
        task_id: task
        for task_id, task in tasks.items()
        if task.get("worker") == LOOP_WORKER
        and task.get("state") in ("SUCCESS", "FAILURE")
        and set(named(task)) & set(job_ids)
    }


def tasks_naming(flower: str, job_ids: list[str], expected: list[str]) -> dict[str, dict[str, Any]]:
    """The tasks that ran `job_ids`, once Flower has seen a task name each of `expected`."""

    def seen() -> dict[str, dict[str, Any]] | None:
        tasks = flower_tasks(flower, job_ids)
        return tasks if set(expected) <= {job for task in tasks.values() for job in named(task)} else None

    return wait_for(seen, 30, "Flower to show the tasks that ran the jobs", interval=0.3)


@pytest.fixture(scope="module")
def loop_worker(stack) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(stack.tmp / "loop-worker.log", env={}, name=LOOP_WORKER, queues=LOOP_QUEUE)
    worker.wait_ready()
    yield worker
    worker.stop()
    cancel_left_over(LOOP_QUEUE)


@pytest.fixture(scope="module")
def flower(stack, loop_worker) -> Iterator[str]:
    """Flower on the tests' broker, once it hears the loop worker."""
    with running_flower(stack.tmp, FLOWER_AUTH, LOOP_WORKER) as url:
        yield url


def test_a_backlog_runs_in_fewer_tasks_than_jobs(client, loop_worker, flower) -> None:
    job_ids = hold([quick(index) for index in range(6)])
    release(job_ids, LOOP_QUEUE)
    done = [wait_finished(client, job_id) for job_id in job_ids]

    assert [(job["status"], job["attempts"], len(job["outputs"])) for job in done] == [
        ("succeeded", 1, 1)
    ] * 6
    log = log_with_ends(loop_worker, job_ids)
    assert [successes(log, job_id) for job_id in job_ids] == [1] * 6
    # Each call ran one job: the backlog ran in the task's loop, not as a fused call.
    assert not [line for line in log.splitlines() if "as one call" in line and job_ids[0] in line]

    # In Flower: fewer tasks than jobs, one of them ran several, and each job is named by exactly one
    # task, stored by it, in the order they were queued.
    tasks = tasks_naming(flower, job_ids, job_ids)
    ran = {task_id: named(task) for task_id, task in tasks.items()}
    assert sorted(job for jobs_run in ran.values() for job in jobs_run) == sorted(job_ids), ran
    assert len(tasks) < len(job_ids) and max(map(len, ran.values())) >= 2, ran
    for task_id, task in tasks.items():
        assert task["state"] == "SUCCESS" and task["name"] == "diffq.run_job", task
        assert ran[task_id] == sorted(ran[task_id], key=job_ids.index)
        outcome = ", ".join(f"job {job_id}: storing outputs" for job_id in ran[task_id])
        assert task["result"] == repr(outcome), task


def too_small_for_tiny_sd(client) -> dict[str, Any]:
    """An img2img job the API takes (its size comes from its image) but tiny-sd can't denoise: a 16×16
    image without guidance leaves a norm group a single value (tests/workers/test_model_fit.py). The
    worker fails it with `bad_input`."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buffer, format="PNG")
    image = upload_image(client, buffer.getvalue(), "small.png")
    params = {"prompt": "a cat", "image": image, "num_inference_steps": 2, "guidance_scale": 1.0, "seed": 0}
    return {"type": "img2img", "model": "tiny-sd", "params": params}


def test_a_job_that_fails_in_a_backlog_fails_alone(client, loop_worker, flower) -> None:
    job_ids = hold([quick(0), quick(1), too_small_for_tiny_sd(client), quick(3), quick(4)])
    bad = job_ids[2]
    release(job_ids, LOOP_QUEUE)
    done = [wait_finished(client, job_id) for job_id in job_ids]

    failed = done[2]
    assert failed["status"] == "failed" and failed["attempts"] == 1 and failed["outputs"] == []
    assert failed["error"]["code"] == "bad_input", failed["error"]
    assert "make the image larger" in failed["error"]["message"]
    assert_succeeded_once(loop_worker, [job for job in done if job["id"] != bad])

    # The task that ran the bad job went on with the next ones, then failed, naming every job it ran in
    # order, the failed one with why; a task that ran no failed job succeeded. Each job is named once.
    tasks = tasks_naming(flower, job_ids, job_ids)
    [failed_task] = [task for task in tasks.values() if bad in named(task)]
    assert failed_task["state"] == "FAILURE" and failed_task["exception"].startswith("JobFailed("), (
        failed_task
    )
    assert f"job {bad} failed: bad_input: this model can't make the image" in failed_task["exception"]
    ran = named(failed_task)
    assert ran == job_ids[job_ids.index(ran[0]) : job_ids.index(ran[0]) + len(ran)], failed_task
    assert job_ids.index(ran[-1]) > job_ids.index(bad), failed_task  # it went on after the failure
    assert sorted(job for task in tasks.values() for job in named(task)) == sorted(job_ids), tasks
    others = [task for task in tasks.values() if task is not failed_task]
    assert all(task["state"] == "SUCCESS" for task in others), others


def test_canceling_a_running_job_in_a_backlog_cancels_only_it(client, loop_worker, flower) -> None:
    job_ids = hold([quick(0), quick(1), quick(2, steps=400), quick(3), quick(4)])
    long_job = job_ids[2]
    release(job_ids, LOOP_QUEUE)

    def long_job_runs() -> bool:
        job = client.job(long_job)
        assert job["status"] in ("queued", "running"), job
        return job["status"] == "running" and (job["progress"] or {}).get("step", 0) >= 2

    wait_for(long_job_runs, 60, "the long job to run", interval=0.02)
    assert client.cancel(long_job)["status"] == "canceled"
    done = [wait_finished(client, job_id) for job_id in job_ids]

    canceled = done[2]
    assert canceled["status"] == "canceled" and canceled["outputs"] == [] and canceled["error"] is None
    assert 2 <= canceled["progress"]["step"] < canceled["progress"]["total"]
    assert get_storage().list(f"jobs/{long_job}/") == []
    assert_succeeded_once(loop_worker, [job for job in done if job["id"] != long_job])
    # A cancel is no failure: the task that ran the canceled job succeeded and says it was canceled.
    tasks = tasks_naming(flower, job_ids, job_ids)
    [task] = [task for task in tasks.values() if long_job in named(task)]
    assert task["state"] == "SUCCESS" and f"job {long_job}: canceled" in task["result"], task
    assert all(task["state"] == "SUCCESS" for task in tasks.values()), tasks


def test_flower_names_every_job_of_a_task_that_ran_many(client, loop_worker, flower) -> None:
    """A batch of like jobs: fused 8 to a call (workers/fusion.py), and the calls run in one task's loop.
    The task's result, which Flower shows, is to name every job it ran."""
    job_ids = hold(
        [text2img_spec(num_inference_steps=2, num_images=1, prompt=f"cat {i}", seed=i) for i in range(24)]
    )
    release(job_ids, LOOP_QUEUE)
    done = [wait_finished(client, job_id) for job_id in job_ids]
    assert [job["status"] for job in done] == ["succeeded"] * 24

    def ended() -> dict[str, dict[str, Any]]:  # every task that ran one of them, seen by Flower
        return flower_tasks(flower, job_ids)

    tasks = wait_for(lambda: (found := ended()) and len(found) >= 1 and found, 30, "Flower to show the task")
    time.sleep(1)  # any later task's end
    tasks = ended()
    # It ran them in one task (three fused calls well under TASK_RUNS_FOR_S), which names all 24.
    assert len(tasks) == 1, tasks
    [task] = tasks.values()
    assert task["state"] == "SUCCESS", task
    assert sorted(named(task)) == sorted(job_ids), task["result"][-200:]


def test_a_warm_shutdown_stops_a_long_backlog_and_loses_no_job(stack) -> None:
    """SIGTERM (a warm shutdown) while a task works through a long backlog: the task stops taking jobs
    once `TASK_RUNS_FOR_S` has passed, the worker exits, and every job it did not finish is still queued:
    none ran twice, none was lost, none is left running."""
    name = f"loopstop@{HOST}"
    worker = WorkerProcess(stack.tmp / "loop-stop-worker.log", env={}, name=name, queues=STOP_QUEUE)
    try:
        worker.wait_ready()
        # Far more work than a task runs: about 0.15 s a job on a 2-core CPU, 25 s in all.
        job_ids = hold([quick(index, steps=10) for index in range(150)])
        release(job_ids, STOP_QUEUE)

        def into_the_backlog() -> bool:
            return sum(job.status == JobStatus.SUCCEEDED for job in jobs(job_ids)) >= 3

        wait_for(into_the_backlog, 60, "the worker to be into the backlog", interval=0.05)
        sent = time.monotonic()
        worker.process.terminate()
        exit_code = worker.process.wait(timeout=120)
        took = time.monotonic() - sent
        ended = jobs(job_ids)
    finally:
        worker.stop()
        cancel_left_over(STOP_QUEUE)

    log = worker.log_path.read_text(errors="replace")
    assert exit_code == 0, log[-3000:]
    assert "Warm shutdown" in log
    assert took < 60, f"the worker took {took:.1f}s to stop"
    # Each task ran for at most TASK_RUNS_FOR_S and one job more (a job here takes well under a second).
    runtimes = [
        float(seconds) for seconds in re.findall(r"Task diffq\.run_job\[\S+\] succeeded in ([\d.]+)s", log)
    ]
    assert runtimes and max(runtimes) < TASK_RUNS_FOR_S + 5, runtimes
    statuses = [job.status for job in ended]
    # Nothing running, nothing failed: each job either ran once to its end or was never claimed.
    assert set(statuses) <= {JobStatus.SUCCEEDED, JobStatus.QUEUED}, statuses
    for job in ended:
        if job.status == JobStatus.SUCCEEDED:
            assert job.attempts == 1 and len(job.outputs) == 1
            assert get_storage().list(f"jobs/{job.id}/") == [job.outputs[0]["key"]]
            assert successes(log, str(job.id)) == 1
        else:
            assert job.attempts == 0 and job.started_at is None and job.worker is None, job.id
    # It stopped taking jobs rather than drain the backlog, and left the fleet cleanly.
    assert JobStatus.QUEUED in statuses, f"all {len(job_ids)} jobs ran: the task did not stop"
    with db_session() as session:
        assert session.get(WorkerNode, name) is None
