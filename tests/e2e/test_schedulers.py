"""Schedulers named in a job: each changes the image, and each matches diffusers with that scheduler."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cli.client import Client
from core.schedulers import SCHEDULERS, make_scheduler
from tests.utils.images import as_array
from tests.utils.jobs import text2img_spec, wait_finished

STEPS = 8


@pytest.fixture(scope="module")
def default_job(stack):
    """The same job on the model's own scheduler (PNDM), submitted once for the module."""
    from cli.client import Client

    return Client(stack.api_url).submit(text2img_spec(num_inference_steps=STEPS, num_images=1, seed=5))


def output_array(client, job_id: str) -> np.ndarray:
    done = wait_finished(client, job_id)
    assert done["status"] == "succeeded", done["error"]
    return as_array(Image.open(io.BytesIO(client.download(done["outputs"][0]["url"]))))


@pytest.mark.parametrize(
    ("name", "class_name", "config"),
    [
        ("euler_a", "EulerAncestralDiscreteScheduler", {}),
        ("dpmpp_2m_karras", "DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    ],
)
def test_scheduler_matches_diffusers_and_changes_the_image(
    client, models_dir, default_job, name: str, class_name: str, config: dict
) -> None:
    import diffusers
    from diffusers import StableDiffusionPipeline

    spec = text2img_spec(num_inference_steps=STEPS, num_images=1, seed=5, scheduler=name)
    got = output_array(client, client.submit(spec)["id"])

    pipe = StableDiffusionPipeline.from_pretrained(
        models_dir / "tiny-sd", dtype=torch.float32, use_safetensors=True
    )
    pipe.set_progress_bar_config(disable=True)
    # As diffusers' docs swap a scheduler.
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **config)
    params = spec["params"]
    expected = pipe(
        prompt=params["prompt"],
        num_inference_steps=STEPS,
        guidance_scale=params["guidance_scale"],
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]
    assert np.abs(got - as_array(expected)).max() <= 1

    default = output_array(client, default_job["id"])
    assert np.abs(got - default).mean() > 2, f"{name} made the same image as the default scheduler"


def test_dpmpp_karras_sets_karras_sigmas(models_dir) -> None:
    from diffusers import PNDMScheduler

    base = PNDMScheduler.from_pretrained(models_dir / "tiny-sd" / "scheduler")
    karras = make_scheduler("dpmpp_2m_karras", base)
    assert type(karras).__name__ == "DPMSolverMultistepScheduler"
    assert karras.config.use_karras_sigmas and karras.config.algorithm_type == "dpmsolver++"
    assert not make_scheduler("dpmpp_2m", karras).config.use_karras_sigmas
    copy = make_scheduler(None, base)
    assert type(copy) is PNDMScheduler and copy is not base


def test_unknown_scheduler_is_422(stack) -> None:
    response = Client(stack.api_url).request("POST", "/v1/jobs", json=text2img_spec(scheduler="euler_b"))
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"][-1] == "scheduler"
    assert "unknown scheduler 'euler_b'" in error["msg"] and "dpmpp_2m_karras" in error["msg"]


def test_list_schedulers(stack) -> None:
    listed = Client(stack.api_url).request("GET", "/v1/schedulers").json()["data"]
    names = [entry["name"] for entry in listed]
    assert names == list(SCHEDULERS)
    assert {
        "ddim",
        "ddpm",
        "pndm",
        "euler",
        "euler_a",
        "dpmpp_2m",
        "dpmpp_2m_karras",
        "unipc",
        "heun",
        "lms",
    } <= set(names)
    karras = next(entry for entry in listed if entry["name"] == "dpmpp_2m_karras")
    assert karras["class_name"] == "DPMSolverMultistepScheduler"
    assert karras["overrides"]["use_karras_sigmas"] is True


def test_unconditional_with_ddim_matches_ddim_pipeline(client, models_dir) -> None:
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMScheduler, UNet2DModel

    job = client.submit(
        {
            "type": "unconditional",
            "model": "tiny-ddpm",
            "params": {"num_inference_steps": 10, "seed": 3, "num_images": 2, "scheduler": "ddim"},
        }
    )
    done = wait_finished(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["progress"]["total"] == 10

    unet = UNet2DModel.from_pretrained(models_dir / "tiny-ddpm" / "unet", use_safetensors=True)
    ddpm = DDPMScheduler.from_pretrained(models_dir / "tiny-ddpm" / "scheduler")
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(ddpm.config))
    pipe.set_progress_bar_config(disable=True)
    for index, output in enumerate(done["outputs"]):
        expected = pipe(
            num_inference_steps=10, generator=torch.Generator("cpu").manual_seed(3 + index)
        ).images[0]
        got = as_array(Image.open(io.BytesIO(client.download(output["url"]))))
        assert np.abs(got - as_array(expected)).max() <= 1
