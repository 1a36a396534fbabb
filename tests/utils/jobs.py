"""Helpers for driving jobs through the API in tests."""

import io
import time
import uuid
from typing import Any

from PIL import Image

from cli.client import FINISHED, Client


def wait_finished(client: Client, job_id: str, timeout: float = 120, poll_s: float = 0.05) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if job["status"] in FINISHED:
            return job
        time.sleep(poll_s)
    raise TimeoutError(f"job {job_id} did not finish in {timeout}s: {client.job(job_id)}")


def text2img_spec(**params: Any) -> dict[str, Any]:
    return {
        "type": "text2img",
        "model": params.pop("model", "tiny-sd"),
        "params": {
            "prompt": "a squirrel in Picasso style",
            "negative_prompt": "",
            "num_inference_steps": 20,
            "guidance_scale": 7.5,
            "width": 64,
            "height": 64,
            "seed": 1234,
            "num_images": 2,
        }
        | params,
    }


def upload_image(client: Client, image: Image.Image | bytes, name: str = "image.png") -> dict[str, Any]:
    """Upload an image (or raw bytes) and return the job reference, `{"upload": id}`."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        image = buffer.getvalue()
    response = client.http.post("/v1/uploads", files={"file": (name, image)})
    assert response.status_code == 201, response.text
    return response.json()["image"]


def wait_batch_done(client: Client, batch_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batch(batch_id)
        if batch["done"]:
            return batch
        time.sleep(0.1)
    raise TimeoutError(f"batch {batch_id} did not finish in {timeout}s: {client.batch(batch_id)}")


def submit_to_queue(queue: str, spec: dict[str, Any]) -> uuid.UUID:
    """Write a job row and send its task to `queue`, as the API does for the queue it picks."""
    from core.db import db_session
    from core.models import Job
    from core.queue import RUN_JOB_TASK, get_celery

    with db_session() as session:
        job = Job(type=spec["type"], model=spec["model"], params=spec["params"])
        session.add(job)
    get_celery().send_task(RUN_JOB_TASK, args=[str(job.id)], queue=queue)
    return job.id
