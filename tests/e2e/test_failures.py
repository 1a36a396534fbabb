"""Failure paths: each failed job says why, and nothing is left running."""

import shutil

import pytest
from sqlalchemy import func, select

from core.config import get_settings
from core.db import db_session
from core.queue import RUN_JOB_TASK, get_celery
from core.tables import Job, JobStatus
from tests.utils.jobs import submit_to_queue, text2img_spec, wait_finished
from tests.utils.services import WorkerProcess, wait_for

FAULT_QUEUE = "diffq-test-faults"


@pytest.fixture(scope="module")
def pickle_model(models_dir):
    """tiny-sd with its UNet saved as pickle weights only."""
    from diffusers import UNet2DConditionModel

    folder = models_dir / "pickle-sd"
    shutil.copytree(models_dir / "tiny-sd", folder, dirs_exist_ok=True)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    shutil.rmtree(folder / "unet")
    unet.save_pretrained(folder / "unet", safe_serialization=False)
    assert (folder / "unet" / "diffusion_pytorch_model.bin").exists()
    return "pickle-sd"


def test_pickle_weights_fail_with_bad_model(client, pickle_model) -> None:
    job = client.submit(text2img_spec(model=pickle_model, num_images=1))
    done = wait_finished(client, job["id"])
    assert done["status"] == "failed"
    assert done["error"]["code"] == "bad_model"
    assert "safetensors" in done["error"]["message"]
    assert done["outputs"] == []


@pytest.fixture(scope="module")
def fault_worker(stack):
    worker = WorkerProcess(
        stack.tmp / "fault-worker.log",
        env={"DIFFQ_TEST_FAULT": "raise_at:5"},
        name="faulty@%h",
        queues=FAULT_QUEUE,
        preload="tests.utils.faults",
    )
    worker.wait_ready()
    yield worker
    worker.stop()


def test_worker_that_raises_mid_run_fails_the_job(client, fault_worker) -> None:
    job_id = submit_to_queue(FAULT_QUEUE, text2img_spec(num_inference_steps=10, num_images=1))
    done = wait_finished(client, str(job_id))
    assert done["status"] == "failed"
    assert done["error"] == {"code": "internal", "message": "RuntimeError: injected failure in UNet call 5"}
    assert done["finished_at"] is not None
    # One batched UNet call per step: the failure came in step 5, after four were recorded.
    assert done["progress"]["step"] == 4
    # Nothing of the fault worker's queue is left running.
    with db_session() as session:
        running = session.scalar(
            select(func.count()).where(Job.queue == FAULT_QUEUE, Job.status == JobStatus.RUNNING)
        )
    assert running == 0

    # A failed job is a failed task in the worker's log (and in Flower), not a "succeeded" one.
    def task_line() -> str | None:
        lines = fault_worker.log_path.read_text(errors="replace").splitlines()
        return next((line for line in lines if "Task diffq.run_job[" in line and job_id in line), None)

    line = wait_for(task_line, 30, "the task's line in the worker log", interval=0.2)
    assert "succeeded" not in line
    assert "JobFailed" in line and "injected failure in UNet call 5" in line


def test_duplicate_delivery_runs_once(client) -> None:
    job = client.submit(text2img_spec(num_inference_steps=2, num_images=1))
    get_celery().send_task(RUN_JOB_TASK, args=[job["id"]], queue=get_settings().queue)
    done = wait_finished(client, job["id"])
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert len(done["outputs"]) == 1
