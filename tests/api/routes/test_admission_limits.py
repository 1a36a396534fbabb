"""Model-aware admission: jobs a model's scheduler can't run, and model references that can't name a
folder, are refused with 422 before anything is queued. FastAPI's TestClient on the real Postgres."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def api(models_dir: Path, database: str, s3: str) -> Iterator[TestClient]:
    from api.main import app

    with TestClient(app) as test_client:
        yield test_client


def _submit(api: TestClient, body: dict) -> tuple[int, str]:
    response = api.post("/v1/jobs", json=body)
    return response.status_code, response.text


@pytest.mark.parametrize("scheduler", [None, "ddim", "ddpm"])
def test_tiny_sd_refuses_1000_steps(api: TestClient, scheduler: str | None) -> None:
    params = {"prompt": "a cat", "num_inference_steps": 1000, "scheduler": scheduler}
    code, text = _submit(api, {"type": "text2img", "model": "tiny-sd", "params": params})
    assert code == 422, text
    whose = "tiny-sd's scheduler" if scheduler is None else f"scheduler '{scheduler}' on tiny-sd"
    assert f"{whose} allows at most 999 steps" in text

    params["num_inference_steps"] = 999
    code, text = _submit(api, {"type": "text2img", "model": "tiny-sd", "params": params})
    assert code in (200, 201, 202), text


@pytest.mark.parametrize("scheduler", ["dpmpp_2m", "unipc"])
def test_tiny_ddpm_refuses_1000_multistep_steps(api: TestClient, scheduler: str) -> None:
    params = {"num_inference_steps": 1000, "scheduler": scheduler}
    code, text = _submit(api, {"type": "unconditional", "model": "tiny-ddpm", "params": params})
    assert code == 422, text
    assert f"scheduler '{scheduler}' on tiny-ddpm allows at most 999 steps" in text


def test_over_long_model_reference_is_422(api: TestClient) -> None:
    code, text = _submit(api, {"type": "unconditional", "model": "0" * 512})
    assert code == 422, text
    assert "is not a folder name or a Hub repo id" in text
