"""Property-based jobs (Hypothesis): job specs drawn from the whole space a user may send, on the tiny
models, through the real API and a real worker.

Property: the API refuses the job with a 4xx that says what to fix, or the job succeeds with finite,
non-flat images whose recorded parameters, resubmitted alone, make the same image again (within one
grey level). A job the API accepts and then fails, or a succeeded job with a flat (e.g. black) image,
breaks it. Step counts are kept small here so that the suite stays short, with targeted cases at each
scheduler's step limit; `bench/fuzz.py jobs --examples N` draws more and larger cases.
"""

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cli.client import Client
from core.images import read_png_parameters
from core.schedulers import SCHEDULERS
from tests.utils.jobs import wait_finished

EXAMPLES = int(os.environ.get("DIFFQ_FUZZ_EXAMPLES", "10"))
MAX_SEED = 2**32 - 1
MODEL_FOR_TYPE = {
    "text2img": "tiny-sd",
    "img2img": "tiny-sd",
    "inpaint": "tiny-sd",
    "depth2img": "tiny-sd-depth",
    "unconditional": "tiny-ddpm",
}
IMAGE_MODES = ("RGB", "RGBA", "L", "LA", "P", "I;16", "I", "F", "CMYK", "1")


@st.composite
def images(draw: st.DrawFn) -> bytes:
    """An image file of a random mode, bit depth, size and alpha, encoded as PNG (TIFF for the modes
    PNG can't hold)."""
    mode = draw(st.sampled_from(IMAGE_MODES))
    width, height = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if mode in ("I;16", "I", "F"):
        top = {"I;16": 65535, "I": 2**31 - 1, "F": 1.0}[mode]
        if mode == "F":
            pixels = rng.random((height, width), dtype=np.float32) * draw(st.sampled_from([1.0, 255.0]))
            image = Image.fromarray(pixels)
        else:
            dtype = np.uint16 if mode == "I;16" else np.int32
            image = Image.fromarray(rng.integers(0, top, (height, width)).astype(dtype))
    else:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").convert(mode)
        if mode in ("RGBA", "LA"):
            alpha = Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
            image.putalpha(alpha.point(lambda v: 255 if v > 128 else draw(st.sampled_from([0, 255]))))
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if mode in ("CMYK", "F", "I") else "PNG")
    return buffer.getvalue()


def sizes() -> st.SearchStrategy[int | None]:
    return st.one_of(st.none(), st.integers(1, 12).map(lambda n: 8 * n), st.integers(1, 96))


@st.composite
def job_specs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A job spec and the image files it names (uploaded before it is submitted)."""
    job_type = draw(st.sampled_from(list(MODEL_FOR_TYPE)))
    params: dict[str, Any] = {
        "num_inference_steps": draw(st.integers(1, 6)),
        "seed": draw(st.one_of(st.integers(0, MAX_SEED), st.sampled_from([0, MAX_SEED - 1, MAX_SEED]))),
        "num_images": draw(st.integers(1, 2)),
        "scheduler": draw(st.one_of(st.none(), st.sampled_from(sorted(SCHEDULERS)))),
    }
    files: dict[str, bytes] = {}
    if job_type != "unconditional":
        params["prompt"] = draw(st.text(min_size=0, max_size=40))
        params["guidance_scale"] = draw(st.floats(0, 30))
    if job_type in ("text2img", "inpaint"):
        params["width"], params["height"] = draw(sizes()), draw(sizes())
        params = {key: value for key, value in params.items() if value is not None or key == "scheduler"}
    if job_type in ("img2img", "inpaint", "depth2img"):
        params["strength"] = draw(st.floats(0.05, 1.0))
        files["image"] = draw(images())
    if job_type == "inpaint":
        files["mask_image"] = draw(images())
    if job_type == "depth2img" and draw(st.booleans()):
        files["depth_map"] = draw(images())
    return {"type": job_type, "model": MODEL_FOR_TYPE[job_type], "params": params}, files


def says_what_to_fix(response: Any) -> bool:
    detail = response.json().get("detail")
    if isinstance(detail, str):
        return bool(detail.strip())
    return bool(detail) and all(str(error.get("msg", "")).strip() and error.get("loc") for error in detail)


def output_images(client: Client, job: dict[str, Any]) -> list[bytes]:
    return [client.download(output["url"]) for output in job["outputs"]]


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def check_job(client: Client, spec: dict[str, Any], files: dict[str, bytes]) -> None:
    for field, data in files.items():
        upload = client.http.post("/v1/uploads", files={"file": (f"{field}.img", data)})
        if upload.status_code >= 400:
            assert upload.status_code < 500 and says_what_to_fix(upload), upload.text
            return
        spec["params"][field] = upload.json()["image"]
    response = client.http.post("/v1/jobs", json=spec)
    if response.status_code >= 400:
        assert response.status_code < 500 and says_what_to_fix(response), response.text
        return
    assert response.status_code == 201, response.text
    job = wait_finished(client, response.json()["id"], timeout=300)
    assert job["status"] == "succeeded", f"accepted, then {job['status']}: {job.get('error')} for {spec}"
    assert len(job["outputs"]) == spec["params"].get("num_images", 1)
    made = output_images(client, job)
    for data in made:
        image = pixels(data)
        assert np.isfinite(image).all() and image.std() > 0, f"a flat image from {spec}"
    # The last image is the one whose seed is furthest from the job's own.
    again_spec = read_png_parameters(made[-1])
    again = wait_finished(client, client.submit(again_spec)["id"], timeout=300)
    assert again["status"] == "succeeded", again.get("error")
    [remade] = output_images(client, again)
    assert np.abs(pixels(remade) - pixels(made[-1])).max() <= 1, f"not remade from {again_spec}"


@given(case=job_specs())
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("DIFFQ_FUZZ_RANDOM"),
    suppress_health_check=list(HealthCheck),
)
def test_accepted_jobs_succeed_with_images_that_remake(client: Client, case) -> None:
    spec, files = case
    check_job(client, spec, files)


@pytest.mark.parametrize("scheduler", [None, *sorted(SCHEDULERS)])
def test_the_step_limit_of_every_scheduler_is_admitted(api, scheduler: str | None) -> None:
    """1000 steps (the schema's most) on tiny-ddpm: accepted, or refused with a message that names the
    model's limit, and that limit is accepted. (tests/core/test_scheduler_limits.py checks the limits
    against diffusers' own schedulers over a grid; the test below runs the original failing case.)"""
    spec: dict[str, Any] = {"type": "unconditional", "model": "tiny-ddpm", "params": {"seed": 1}}
    spec["params"] |= {"num_inference_steps": 1000, "scheduler": scheduler}
    response = api.post("/v1/jobs", json=spec)
    if response.status_code == 422:
        [error] = response.json()["detail"]
        assert error["loc"][-1] == "num_inference_steps" and "at most" in error["msg"], error
        limit = int(error["msg"].split("at most ")[1].split()[0])
        assert 1 <= limit < 1000
        spec["params"]["num_inference_steps"] = limit
        response = api.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    # Admission is what is tested: the end-to-end worker would otherwise spend up to a minute on the
    # job's 1000 steps, and it takes it before the `api` fixture cancels what is still queued.
    assert api.post(f"/v1/jobs/{response.json()['id']}/cancel").status_code == 200


def test_dpm_solver_at_its_step_limit_makes_a_finite_image(client: Client, models_dir: Path) -> None:
    """The replayed bug: DPM-Solver++ with as many steps as the model has training timesteps made NaN
    and "succeeded" with a black image. Now that is refused with the model's limit, and the most it
    allows runs to a non-flat image. The model is tiny-ddpm with 100 training timesteps instead of
    1000, so that the case at the limit runs in seconds."""
    model = "tiny-ddpm-100"
    if not (models_dir / model).exists():
        shutil.copytree(models_dir / "tiny-ddpm", models_dir / model)
        config_file = models_dir / model / "scheduler" / "scheduler_config.json"
        config_file.write_text(json.dumps(json.loads(config_file.read_text()) | {"num_train_timesteps": 100}))
    spec = {"type": "unconditional", "model": model, "params": {"seed": 1, "scheduler": "dpmpp_2m"}}
    spec["params"]["num_inference_steps"] = 100
    refused = client.http.post("/v1/jobs", json=spec)
    assert refused.status_code == 422, refused.text
    message = refused.json()["detail"][0]["msg"]
    assert f"scheduler 'dpmpp_2m' on {model} allows at most" in message, message
    spec["params"]["num_inference_steps"] = int(message.split("at most ")[1].split()[0])
    job = wait_finished(client, client.submit(spec)["id"], timeout=300)
    assert job["status"] == "succeeded", job.get("error")
    assert pixels(output_images(client, job)[0]).std() > 0
