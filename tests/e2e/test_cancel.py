"""Cancellation: a queued job never runs, a running one stops at its next step and stores nothing,
a finished one cannot be canceled."""

import time
import uuid

import boto3
import pytest
from sqlalchemy import update

from cli.client import Client
from core.config import get_settings
from core.db import db_session
from core.queue import RUN_JOB_TASK, get_celery
from core.tables import Job, JobStatus
from tests.conftest import BUCKET
from tests.utils.jobs import text2img_spec, wait_finished, write_queued_job


def stored_keys(s3_endpoint: str, job_id: str) -> list[str]:
    listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(
        Bucket=BUCKET, Prefix=f"outputs/jobs/{job_id}/"
    )
    return [item["Key"] for item in listed.get("Contents", [])]


def test_canceled_queued_job_never_runs(client) -> None:
    job_id = write_queued_job(text2img_spec(num_inference_steps=2, num_images=1))
    canceled = client.cancel(str(job_id))
    assert canceled["status"] == "canceled" and canceled["finished_at"] is not None

    # It reaches the worker's queue, and a wake-up naming it, after the cancel; a job sent after it
    # shows when the worker got past it.
    with db_session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(queue=get_settings().queue))
    get_celery().send_task(RUN_JOB_TASK, args=[str(job_id)], queue=get_settings().queue)
    marker = client.submit(text2img_spec(num_inference_steps=2, num_images=1))
    assert wait_finished(client, marker["id"])["status"] == "succeeded"

    job = client.job(str(job_id))
    assert job["status"] == "canceled"
    assert job["attempts"] == 0 and job["started_at"] is None and job["outputs"] == []


def test_cancel_running_job_stops_it_without_outputs(client, s3) -> None:
    job = client.submit(text2img_spec(num_inference_steps=500, num_images=1))
    deadline = time.monotonic() + 120
    while (current := client.job(job["id"]))["status"] != "running" or (current["progress"] or {}).get(
        "step", 0
    ) < 2:
        assert current["status"] in ("queued", "running"), current
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.02)

    canceled = client.cancel(job["id"])
    assert canceled["status"] == "canceled"

    # The worker runs one job at a time: once a later job has run, it has stopped this one.
    marker = client.submit(text2img_spec(num_inference_steps=2, num_images=1))
    assert wait_finished(client, marker["id"])["status"] == "succeeded"
    done = client.job(job["id"])
    assert done["status"] == "canceled"
    assert done["outputs"] == [] and done["error"] is None
    # It stopped mid-denoise, and says where.
    assert 2 <= done["progress"]["step"] < done["progress"]["total"] == 501
    assert stored_keys(s3, job["id"]) == []


def test_cancel_stops_within_a_step_and_skips_the_decode(stack, s3) -> None:
    """Run the worker's task here, in this process, and cancel from inside the third UNet call: no UNet
    call and no VAE decode may follow."""
    from workers.pipelines import get_base_pipeline
    from workers.tasks import run_job

    job_id = write_queued_job(text2img_spec(num_inference_steps=20, num_images=2))
    pipe = get_base_pipeline("tiny-sd", "text2img")
    calls = {"unet": 0, "decode": 0, "after_cancel": 0}

    def on_unet(module, args, kwargs):
        calls["unet"] += 1
        if calls["unet"] == 3:
            response = Client(stack.api_url).request("POST", f"/v1/jobs/{job_id}/cancel")
            assert response.status_code == 200, response.text
        elif calls["unet"] > 3:
            calls["after_cancel"] += 1

    def on_decode(module, args):
        calls["decode"] += 1

    hooks = [
        pipe.unet.register_forward_pre_hook(on_unet, with_kwargs=True),
        pipe.vae.decoder.register_forward_pre_hook(on_decode),
    ]
    try:
        assert run_job(str(job_id)) == f"job {job_id}: canceled"
    finally:
        for hook in hooks:
            hook.remove()

    assert calls == {"unet": 3, "decode": 0, "after_cancel": 0}
    with db_session() as session:
        job = session.get_one(Job, job_id)
        assert job.status == JobStatus.CANCELED and job.outputs == []
        assert job.progress["step"] == 3  # the step the cancel came in finished, no other began
    assert stored_keys(s3, str(job_id)) == []


def test_cancel_finished_job_is_409(client) -> None:
    job = wait_finished(client, client.submit(text2img_spec(num_inference_steps=2, num_images=1))["id"])
    response = client.http.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert (
        f"job {job['id']} is succeeded" in detail and "only queued or running jobs can be canceled" in detail
    )
    assert client.job(job["id"])["status"] == "succeeded"


@pytest.mark.parametrize("path", ["/v1/jobs/{}/cancel", "/v1/batches/{}/cancel"])
def test_cancel_unknown_is_404(client, path: str) -> None:
    response = client.http.post(path.format(uuid.uuid4()))
    assert response.status_code == 404
