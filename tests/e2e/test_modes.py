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


def test_inpaint_without_a_size_runs_at_the_input_size_rounded_down(client) -> None:
    params = {
        "prompt": PROMPT,
        "image": upload_image(client, noise_image(100, 75, seed=4)),
        "mask_image": upload_image(client, square_mask(100, 75)),
        "num_inference_steps": 2,
        "seed": 5,
        "num_images": 1,
    }
    job_id = client.submit({"type": "inpaint", "model": "tiny-sd", "params": params})["id"]
    job = wait_finished(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert (job["outputs"][0]["width"], job["outputs"][0]["height"]) == (96, 72)
    output = Image.open(io.BytesIO(client.download(job["outputs"][0]["url"])))
    assert output.size == (96, 72)
    assert read_png_parameters(client.download(job["outputs"][0]["url"]))["params"]["width"] == 96


@pytest.mark.parametrize("job_type", ["img2img", "inpaint"])
def test_an_image_that_rounds_below_the_minimum_is_a_422(client, job_type: str) -> None:
    tiny = noise_image(4, 4)
    params = {"prompt": PROMPT, "image": upload_image(client, tiny), "num_inference_steps": 2}
    if job_type == "inpaint":
        params["mask_image"] = upload_image(client, square_mask(4, 4))
    response = client.http.post("/v1/jobs", json={"type": job_type, "model": "tiny-sd", "params": params})
    assert response.status_code == 422, response.text
    assert "rounds down to 0×0" in response.text and "the minimum is 16×16" in response.text


def test_img2img_from_a_16bit_greyscale_png_starts_from_its_gradient(client, models_dir) -> None:
    row = np.linspace(0, 65535, 64).round().astype(np.uint16)
    source = Image.fromarray(np.repeat(row[None], 64, axis=0))
    params = {
        "prompt": PROMPT,
        "image": upload_image(client, source),
        "strength": 0.5,
        "num_inference_steps": 4,
        "seed": 2,
        "num_images": 1,
    }
    job_id = client.submit({"type": "img2img", "model": "tiny-sd", "params": params})["id"]
    job = wait_finished(client, job_id)
    assert job["status"] == "succeeded", job["error"]
    # It starts from the 8-bit gradient, as a direct call with that gradient does (not a near-white image).
    eight_bit = np.round(row / 257).astype(np.uint8)
    gradient = Image.fromarray(np.repeat(eight_bit[None], 64, axis=0)).convert("RGB")
    pipe = reference("StableDiffusionImg2ImgPipeline", models_dir / "tiny-sd")
    call = {k: params[k] for k in ("prompt", "strength", "num_inference_steps")}
    expected = pipe(image=gradient, generator=torch.Generator("cpu").manual_seed(2), **call).images
    assert_matches(outputs_as_arrays(client, job), expected)


def test_inpaint_with_a_transparent_hole_in_an_rgba_mask_repaints_the_hole(client) -> None:
    """Opaque black with a transparent square means "repaint the square": the same job as the white
    square on black."""
    init = noise_image(seed=6)
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (16, 16, 48, 48))
    common = {"prompt": PROMPT, "image": upload_image(client, init), "num_inference_steps": 4, "seed": 9}
    jobs = [
        client.submit({"type": "inpaint", "model": "tiny-sd", "params": common | {"mask_image": mask}})["id"]
        for mask in (upload_image(client, rgba), upload_image(client, square_mask()))
    ]
    from_alpha, from_luminance = (wait_finished(client, job_id) for job_id in jobs)
    assert from_alpha["status"] == from_luminance["status"] == "succeeded", from_alpha["error"]
    got, expected = outputs_as_arrays(client, from_alpha)[0], outputs_as_arrays(client, from_luminance)[0]
    assert np.abs(got - expected).max() <= 1
    # The square is repainted (the tiny model's VAE alters the rest too, less).
    change = np.abs(got - as_array(init)).mean(axis=2)
    inside = np.asarray(square_mask()) > 127
    assert change[inside].mean() > change[~inside].mean()


def test_seeds_past_32_bits_are_a_422(client) -> None:
    for spec in (
        text2img_spec(seed=4294967295, num_images=2),
        {"type": "unconditional", "model": "tiny-ddpm", "params": {"seed": 4294967295, "num_images": 2}},
    ):
        response = client.http.post("/v1/jobs", json=spec)
        assert response.status_code == 422, response.text
        assert "4294967296" in response.text and "at most 4294967294" in response.text
    assert client.http.post("/v1/jobs", json=text2img_spec(seed=4294967294, num_images=2)).status_code == 201


@pytest.mark.parametrize("job_type", ["text2img", "img2img"])
def test_each_outputs_recorded_params_remake_it_alone(client, job_type: str) -> None:
    if job_type == "text2img":
        spec = text2img_spec(num_inference_steps=3, num_images=2, seed=4294967294)
    else:
        params = {"prompt": PROMPT, "image": upload_image(client, noise_image(72, 64, seed=3))}
        spec = {"type": "img2img", "model": "tiny-sd", "params": params | {"num_images": 2, "strength": 0.5}}
        spec["params"]["num_inference_steps"] = 4  # no seed: the API picks and records one
    job = wait_finished(client, client.submit(spec)["id"])
    assert job["status"] == "succeeded", job["error"]
    originals = [client.download(output["url"]) for output in job["outputs"]]
    recorded = [read_png_parameters(data) for data in originals]
    assert recorded[1]["params"]["seed"] == recorded[0]["params"]["seed"] + 1
    for data, parameters in zip(originals, recorded, strict=True):
        again = wait_finished(client, client.submit(parameters)["id"])
        assert again["status"] == "succeeded", again["error"]
        remade = client.download(again["outputs"][0]["url"])
        assert read_png_parameters(remade) == parameters
        # One grey level: a batch of two and a batch of one round differently, as a direct call does.
        diff = np.abs(as_array(Image.open(io.BytesIO(remade))) - as_array(Image.open(io.BytesIO(data))))
        assert diff.max() <= 1, f"seed {parameters['params']['seed']} remade differs by {diff.max()}"
