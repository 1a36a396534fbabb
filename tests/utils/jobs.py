"""Helpers for driving jobs through the API in tests."""

import time
from typing import Any

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
