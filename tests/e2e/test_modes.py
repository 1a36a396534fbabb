"""img2img, inpaint and depth2img through the API and the real worker, against direct diffusers calls.

Each job makes two images seeded s and s + 1; each must equal a direct call of the same diffusers
pipeline class, same parameters, with a CPU generator seeded the same, to one grey level.
"""

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from core.images import read_png_parameters
from tests.utils.images import as_array, gradient_depth, noise_image, square_mask
from tests.utils.jobs import text2img_spec, upload_image, wait_finished

PROMPT = "a squirrel in Picasso style"


def reference(pipeline_class: str, folder):
    import diffusers

    pipe = getattr(diffusers, pipeline_class).from_pretrained(
        folder, dtype=torch.float32, use_safetensors=True
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def follow(client, job_id: str, timeout: float = 120) -> tuple[dict, set[int]]:
    """Poll a job until it ends; return it and every progress `total` seen on the way."""
    totals: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.job(job_id)
        if job["progress"]:
            totals.add(job["progress"]["total"])
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job, totals
        time.sleep(0.01)
    raise TimeoutError(f"job {job_id} did not finish")


def outputs_as_arrays(client, job: dict) -> list[np.ndarray]:
    return [as_array(Image.open(io.BytesIO(client.download(o["url"])))) for o in job["outputs"]]


def assert_matches(got: list[np.ndarray], expected: list[Image.Image]) -> None:
    assert len(got) == len(expected)
    for index, (image, direct) in enumerate(zip(got, expected, strict=True)):
        assert image.shape == as_array(direct).shape
        diff = np.abs(image - as_array(direct)).max()
        assert diff <= 1, f"image {index} differs from a direct diffusers call by {diff} grey levels"


def test_img2img_matches_diffusers_and_counts_the_steps_it_runs(client, models_dir) -> None:
    init = noise_image(seed=1)
    params = {
        "prompt": PROMPT,
        "image": upload_image(client, init),
        "strength": 0.5,
        "num_inference_steps": 10,
        "guidance_scale": 7.5,
        "seed": 7,
        "num_images": 2,
    }
    job, totals = follow(
        client, client.submit({"type": "img2img", "model": "tiny-sd", "params": params})["id"]
    )
    assert job["status"] == "succeeded", job["error"]

    pipe = reference("StableDiffusionImg2ImgPipeline", models_dir / "tiny-sd")
    call = {k: params[k] for k in ("prompt", "strength", "num_inference_steps", "guidance_scale")}
    expected = [
        pipe(image=init, generator=torch.Generator("cpu").manual_seed(7 + i), **call).images[0]
        for i in range(2)
    ]
    assert_matches(outputs_as_arrays(client, job), expected)
    # strength 0.5 skips the first half of the scheduler's timesteps (PNDM's 11 for 10 steps): progress
    # counts the steps that run, from its first write on.
    assert pipe.num_timesteps == 6
    assert totals == {6}
    assert job["progress"]["step"] == job["progress"]["total"] == 6
    embedded = read_png_parameters(client.download(job["outputs"][1]["url"]))
    assert embedded["type"] == "img2img"
    assert embedded["params"]["image"] == params["image"]
    assert embedded["params"]["strength"] == 0.5 and embedded["params"]["seed"] == 8


def test_inpaint_from_a_stored_output_matches_diffusers(client, models_dir) -> None:
    # The image to inpaint is another job's output, named by its storage key.
    first = wait_finished(client, client.submit(text2img_spec(num_inference_steps=2, num_images=1))["id"])
    assert first["status"] == "succeeded", first["error"]
    key = first["outputs"][0]["key"]
    init = Image.open(io.BytesIO(client.download(first["outputs"][0]["url"]))).convert("RGB")
    mask = square_mask()
    params = {
        "prompt": PROMPT,
        "image": {"key": key},
        "mask_image": upload_image(client, mask),
        "num_inference_steps": 6,
        "guidance_scale": 7.5,
        "seed": 11,
        "num_images": 2,
    }
    job = wait_finished(
        client, client.submit({"type": "inpaint", "model": "tiny-sd", "params": params})["id"]
    )
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"]["step"] == job["progress"]["total"]

    pipe = reference("StableDiffusionInpaintPipeline", models_dir / "tiny-sd")
    expected = [
        pipe(
            prompt=PROMPT,
            image=init,
            mask_image=mask,
            num_inference_steps=6,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(11 + i),
        ).images[0]
        for i in range(2)
    ]
    got = outputs_as_arrays(client, job)
    assert_matches(got, expected)
    # White is repainted, black kept: the repainted middle differs from the input far more than the rest.
    change = np.abs(got[0] - as_array(init)).mean(axis=2)
    inside = np.asarray(mask) > 127
    assert change[inside].mean() > change[~inside].mean()


@pytest.mark.parametrize("user_depth", [False, True], ids=["estimated-depth", "supplied-depth"])
def test_depth2img_matches_diffusers(client, models_dir, user_depth: bool) -> None:
    from workers.runners.depth2img import depth_tensor

    init = noise_image(seed=2)
    depth = gradient_depth()
    params = {
        "prompt": PROMPT,
        "image": upload_image(client, init),
        "strength": 0.75,
        "num_inference_steps": 8,
        "guidance_scale": 7.5,
        "seed": 3,
        "num_images": 2,
    }
    if user_depth:
        params["depth_map"] = upload_image(client, depth)
    job, totals = follow(
        client, client.submit({"type": "depth2img", "model": "tiny-sd-depth", "params": params})["id"]
    )
    assert job["status"] == "succeeded", job["error"]
    assert totals == {6}  # int(8 × 0.75) of DDIM's 8 timesteps

    pipe = reference("StableDiffusionDepth2ImgPipeline", models_dir / "tiny-sd-depth")
    expected = [
        pipe(
            prompt=PROMPT,
            image=init,
            depth_map=depth_tensor(depth) if user_depth else None,
            strength=0.75,
            num_inference_steps=8,
            guidance_scale=7.5,
            generator=torch.Generator("cpu").manual_seed(3 + i),
        ).images[0]
        for i in range(2)
    ]
    assert_matches(outputs_as_arrays(client, job), expected)
