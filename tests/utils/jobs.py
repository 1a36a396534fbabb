"""Helpers for driving jobs through the API in tests."""

import time
import uuid
from typing import Any

from cli.client import FINISHED, Client


def wait_finished(client: Client, job_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if job["status"] in FINISHED:
            return job
        time.sleep(0.05)
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
