"""Helpers for driving jobs through the API in tests."""

import io
import time
from typing import Any

import httpx
from PIL import Image

from cli.client import FINISHED, Client

# A queue no test worker serves: a job written there waits until the test moves it, or runs it in-process.
UNSERVED_QUEUE = "diffq-test-unserved"


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


def upload_image(
    client: Client | httpx.Client, image: Image.Image | bytes, name: str = "image.png"
) -> dict[str, Any]:
    """Upload an image (or raw bytes) through the CLI's client or an HTTP client (the API's TestClient)
    and return the job reference, `{"upload": id}`."""
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        image = buffer.getvalue()
    http = client.http if isinstance(client, Client) else client
    response = http.post("/v1/uploads", files={"file": (name, image)})
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


def train_spec(output_model: str, **params: Any) -> dict[str, Any]:
    """A train_unconditional job small enough for a test: 16 px glyphs, a two-level UNet of 16 and 32
    channels, 2 epochs of 4 steps (256 images in batches of 64)."""
    return {
        "type": "train_unconditional",
        "output_model": output_model,
        "params": {
            "dataset": "builtin:glyphs",
            "image_size": 16,
            "train_batch_size": 64,
            "num_epochs": 2,
            "learning_rate": 1e-3,
            "lr_warmup_steps": 2,
            "save_image_epochs": 1,
            "save_model_epochs": 100,
            "checkpointing_steps": 3,
            "sample_inference_steps": 5,
            "eval_batch_size": 4,
            "seed": 0,
            "block_out_channels": [16, 32],
            "layers_per_block": 1,
            "down_block_types": ["DownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "UpBlock2D"],
            "norm_num_groups": 8,
        }
        | params,
    }


def submit_to_queue(queue: str, spec: dict[str, Any], wake: bool = True, **values: Any) -> str:
    """Write a job for `spec` as the API would, in `queue` (one the test's own worker serves), with any
    other column `values` (an `owner`, say), and wake a worker of that queue for it."""
    from core.db import db_session
    from core.queue import send_wakeup
    from core.scheduling import Waiting
    from core.specs import JOB_SPEC
    from core.submit import job_from_spec
    from tests.conftest import TEST_OWNER

    with db_session() as session:
        job = job_from_spec(JOB_SPEC.validate_python(spec), TEST_OWNER)
        job.queue = queue
        for name, value in values.items():
            setattr(job, name, value)
        session.add(job)
    if wake:
        send_wakeup(queue, Waiting(job.id, queue, job.type, job.model))
    return str(job.id)


def claim_job(session: Any, job_id: Any, worker: str) -> Any:
    """Claim this one job for `worker`, as a task run in-process does; the Job, or None."""
    from core.jobs import claim
    from core.scheduling import Claimer

    jobs = claim(session, Claimer(worker=worker, queues=(), only=job_id))
    return jobs[0] if jobs else None


def write_queued_job(spec: dict[str, Any]) -> Any:
    """A queued job row of the tests' owner in a queue no worker serves, so that only the test decides
    when it runs (in-process, or moved to a served queue); returns its id."""
    from core.db import db_session
    from core.tables import Job
    from tests.conftest import TEST_OWNER

    with db_session() as session:
        job = Job(
            type=spec["type"],
            model=spec["model"],
            params=spec["params"],
            queue=UNSERVED_QUEUE,
            owner=TEST_OWNER,
        )
        session.add(job)
    return job.id
