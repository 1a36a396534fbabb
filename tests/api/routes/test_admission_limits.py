"""Model-aware admission: jobs a model can't run (its kind, its scheduler's step limits, a LoRA trained on
another model, training sample steps), and model references that can't name a folder, are refused with 422
before anything is queued. FastAPI's TestClient on the real Postgres."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TEST_OWNER


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


# What each tiny model can run, as the worker's loader decides it; `test_model_kinds_agree_with_the_worker`
# checks this table against real loads and the API against this table.
RUNS = {
    "tiny-sd": {"text2img", "img2img", "inpaint"},
    "tiny-sd-depth": {"depth2img"},
    "tiny-ddpm": {"unconditional"},
}
GENERATION = ("text2img", "img2img", "inpaint", "depth2img", "unconditional")


@pytest.fixture(scope="module")
def image(api_client: TestClient) -> dict:
    from PIL import Image

    from tests.utils.jobs import upload_image

    return upload_image(api_client, Image.new("RGB", (64, 64), (128, 64, 32)))


def _generation_body(job_type: str, model: str, image: dict) -> dict:
    params: dict = {"num_inference_steps": 4}
    if job_type != "unconditional":
        params["prompt"] = "a cat"
    if job_type in ("img2img", "inpaint", "depth2img"):
        params["image"] = image
    if job_type == "inpaint":
        params["mask_image"] = image
    return {"type": job_type, "model": model, "params": params}


def _model_errors(response) -> list[dict]:
    if response.status_code != 422:
        return []
    return [error for error in response.json()["detail"] if error["loc"] == ["body", "model"]]


def _load(models_dir: Path, model: str, job_type: str):
    import torch

    from models_store.load import load_pipeline

    return load_pipeline(models_dir / model, job_type, torch.device("cpu"), torch.float32)


def _worker_runs(models_dir: Path, model: str, job_type: str, cached) -> bool:
    """Whether a worker builds a pipeline for `job_type` on `model`: loaded for that job type, and from
    `cached`, the pipeline that the model's own job type loaded (a worker's cached model serves later
    jobs)."""
    from core.errors import BadModel
    from models_store.load import pipeline_for_task

    try:
        pipeline_for_task(_load(models_dir, model, job_type), job_type)
        loaded = True
    except BadModel:
        loaded = False
    try:
        pipeline_for_task(cached, job_type)
        shared = True
    except BadModel:
        shared = False
    assert loaded == shared, (model, job_type)
    return loaded


@pytest.mark.parametrize("model", sorted(RUNS))
def test_model_kinds_agree_with_the_worker(
    api: TestClient, models_dir: Path, image: dict, model: str
) -> None:
    cached = _load(models_dir, model, sorted(RUNS[model])[0])
    for job_type in GENERATION:
        runs = _worker_runs(models_dir, model, job_type, cached)
        assert runs == (job_type in RUNS[model]), (model, job_type)
        response = api.post("/v1/jobs", json=_generation_body(job_type, model, image))
        errors = _model_errors(response)
        if runs:
            assert response.status_code in (200, 201, 202), response.text
        else:
            assert len(errors) == 1, response.text
            assert errors[0]["type"] == "wrong_model_kind"
            assert errors[0]["msg"].startswith(f"model '{model}' can't run {job_type} jobs: "), errors


@pytest.mark.parametrize(
    ("model", "job_type", "reason"),
    [
        ("tiny-ddpm", "text2img", "it is an unconditional model (UNet2DModel with no text encoder)"),
        ("tiny-ddpm", "depth2img", "it is an unconditional model (UNet2DModel with no text encoder)"),
        ("tiny-sd", "unconditional", "its UNet2DConditionModel is conditioned on text"),
        ("tiny-sd", "depth2img", "a StableDiffusionPipeline has no depth estimator"),
        ("tiny-sd-depth", "img2img", "it is a depth model (StableDiffusionDepth2ImgPipeline)"),
        ("tiny-sd-depth", "unconditional", "its UNet2DConditionModel is conditioned on text"),
    ],
)
def test_wrong_model_kind_says_why(
    api: TestClient, image: dict, model: str, job_type: str, reason: str
) -> None:
    response = api.post("/v1/jobs", json=_generation_body(job_type, model, image))
    assert response.status_code == 422, response.text
    assert f"model '{model}' can't run {job_type} jobs: {reason}" in _model_errors(response)[0]["msg"]


def test_train_lora_needs_a_text_to_image_model(api: TestClient) -> None:
    body = {"type": "train_lora", "model": "tiny-ddpm", "output_model": "lora-of-ddpm", "params": {}}
    body["params"] = {"dataset": "builtin:glyphs", "resolution": 64}
    errors = _model_errors(api.post("/v1/jobs", json=body))
    assert errors and "can't run train_lora jobs: it is an unconditional model" in errors[0]["msg"]


@pytest.fixture
def registered_lora(database: str) -> Iterator[str]:
    from sqlalchemy import delete

    from core.db import db_session
    from core.tables import ModelKind, RegisteredModel

    name = f"lora-{uuid.uuid4().hex[:8]}"
    with db_session() as session:
        session.add(
            RegisteredModel(
                name=name,
                kind=ModelKind.LORA,
                base_model="tiny-sd",
                storage_prefix=f"models/{name}",
                owner=TEST_OWNER,
            )
        )
    yield name
    with db_session() as session:
        session.execute(delete(RegisteredModel).where(RegisteredModel.name == name))


def test_lora_must_match_its_base_model(api: TestClient, models_dir: Path, registered_lora: str) -> None:
    import shutil

    # Another text-to-image model: tiny-sd under another name.
    other = models_dir / f"{registered_lora}-base"
    shutil.copytree(models_dir / "tiny-sd", other)
    params = {"prompt": "a cat", "num_inference_steps": 4, "lora": {"name": registered_lora}}
    try:
        response = api.post("/v1/jobs", json={"type": "text2img", "model": other.name, "params": params})
    finally:
        shutil.rmtree(other)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "params", "lora", "name"]
    assert error["type"] == "wrong_base_model"
    assert error["msg"] == (
        f"LoRA '{registered_lora}' was trained on 'tiny-sd'; use it with that model, not '{other.name}'"
    )

    response = api.post("/v1/jobs", json={"type": "text2img", "model": "tiny-sd", "params": params})
    assert response.status_code in (200, 201, 202), response.text


def _train_unconditional(**params: object) -> dict:
    from tests.utils.jobs import train_spec

    return train_spec(f"never-registered-{uuid.uuid4().hex[:8]}", **params)


@pytest.mark.parametrize("timesteps", [10, 999])
def test_sample_steps_at_most_num_train_timesteps(api: TestClient, timesteps: int) -> None:
    body = _train_unconditional(num_train_timesteps=timesteps, sample_inference_steps=timesteps + 1)
    response = api.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "params", "sample_inference_steps"]
    assert error["msg"].startswith(
        f"sample_inference_steps ({timesteps + 1}) must be at most num_train_timesteps ({timesteps})"
    )

    body = _train_unconditional(num_train_timesteps=timesteps, sample_inference_steps=timesteps)
    response = api.post("/v1/jobs", json=body)
    assert response.status_code in (200, 201, 202), response.text


def _train_lora(model: str = "tiny-sd", **params: object) -> dict:
    base = {"dataset": "builtin:glyphs", "resolution": 64, "validation_prompt": "a glyph"}
    name = f"never-registered-{uuid.uuid4().hex[:8]}"
    return {"type": "train_lora", "model": model, "output_model": name, "params": base | params}


def test_validation_steps_within_the_base_models_scheduler(api: TestClient) -> None:
    # tiny-sd's PNDM (SD 1.x config: "leading" spacing, steps_offset 1) runs at most 999 steps.
    response = api.post("/v1/jobs", json=_train_lora(validation_inference_steps=1000))
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "params", "validation_inference_steps"]
    assert error["msg"] == "tiny-sd's scheduler allows at most 999 steps, got validation_inference_steps=1000"

    response = api.post("/v1/jobs", json=_train_lora(validation_inference_steps=999))
    assert response.status_code in (200, 201, 202), response.text
    # Without a validation prompt no validation image is made: the steps don't matter.
    body = _train_lora(validation_inference_steps=1000, validation_prompt=None)
    assert api.post("/v1/jobs", json=body).status_code in (200, 201, 202)


@pytest.mark.parametrize(
    ("size", "guidance_scale", "num_images", "accepted"),
    [
        (16, 1.0, 1, False),  # tiny-sd's deepest level 1×1, one channel per group, a batch of one
        (16, 7.5, 1, True),  # guidance doubles the batch
        (16, 1.0, 2, True),
        (24, 1.0, 1, True),  # the deepest level is 2×2
    ],
)
def test_text2img_too_small_for_the_models_norm_groups(
    api: TestClient, size: int, guidance_scale: float, num_images: int, accepted: bool
) -> None:
    # Accepted, this job used to fail `internal` in the worker ("Expected more than 1 value per channel").
    params = {"prompt": "a cat", "width": size, "height": size, "guidance_scale": guidance_scale}
    body = {"type": "text2img", "model": "tiny-sd", "params": params | {"num_images": num_images}}
    code, text = _submit(api, body)
    if accepted:
        assert code == 201, text
    else:
        assert code == 422, text
        assert "model 'tiny-sd' can't make this image" in text and "make the image larger" in text


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"width": 100000}, "width 100000 with height unset (the model's 64) makes over 6400000 pixels"),
        ({"height": 16400}, "height 16400 with width unset (the model's 64) makes over 1049600 pixels"),
    ],
)
def test_text2img_with_one_side_counts_the_models_size_against_max_pixels(
    api: TestClient, params: dict, says: str
) -> None:
    """tiny-sd makes 64×64 images: one side over DIFFQ_MAX_PIXELS / 64 (16,384) is over the limit."""
    code, text = _submit(api, {"type": "text2img", "model": "tiny-sd", "params": {"prompt": "a"} | params})
    assert code == 422, text
    assert says in text and "the limit is 1048576 (DIFFQ_MAX_PIXELS)" in text
    code, text = _submit(
        api, {"type": "text2img", "model": "tiny-sd", "params": {"prompt": "a", "width": 16384}}
    )
    assert code == 201, text


def test_one_side_of_a_model_whose_configs_are_not_here_counts_times_16(api: TestClient) -> None:
    body = {"type": "text2img", "model": "someorg/not-downloaded", "params": {"prompt": "a", "width": 65544}}
    code, text = _submit(api, body)
    assert code == 422, text
    assert "width 65544 with height unset (at least 16) makes over 1048704 pixels" in text


def test_inpaint_with_one_side_is_checked_against_max_pixels(api: TestClient, image: dict) -> None:
    params = {"prompt": "a", "image": image, "mask_image": image, "width": 20000}
    code, text = _submit(api, {"type": "inpaint", "model": "tiny-sd", "params": params})
    assert code == 422, text
    assert "the output would be 20000×64 = 1280000 pixels; the limit is 1048576" in text  # the image's 64
    # Refused before its image is read: width × 16 is over the limit whatever the image turns out to be.
    params |= {"width": 100000, "image": {"upload": "0" * 32}, "mask_image": {"upload": "0" * 32}}
    code, text = _submit(api, {"type": "inpaint", "model": "tiny-sd", "params": params})
    assert code == 422, text
    assert "width 100000 with height unset (at least 16) makes over 1600000 pixels" in text


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        ('{"prompt": "a", "guidance_scale": 1e300}', "guidance_scale", "less than or equal to 100"),
        ('{"prompt": "a", "guidance_scale": Infinity}', "guidance_scale", "finite number"),
        ('{"prompt": "a", "guidance_scale": NaN}', "guidance_scale", "finite number"),
    ],
)
def test_unbounded_floats_are_422(api: TestClient, body: str, field: str, says: str) -> None:
    raw = '{"type": "text2img", "model": "tiny-sd", "params": ' + body + "}"
    response = api.post("/v1/jobs", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"][-1] == field and says in error["msg"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("ema_inv_gamma", 1e300), ("ema_power", 1e300), ("lr_warmup_steps", 10**30), ("norm_num_groups", 10**9)],
)
def test_unbounded_training_params_are_422(api: TestClient, field: str, value: float) -> None:
    params = {"dataset": "builtin:glyphs", "image_size": 32, field: value}
    response = api.post(
        "/v1/jobs", json={"type": "train_unconditional", "output_model": "m", "params": params}
    )
    assert response.status_code == 422, response.text
    assert any(
        error["loc"][-1] == field and "less than or equal" in error["msg"]
        for error in response.json()["detail"]
    )
