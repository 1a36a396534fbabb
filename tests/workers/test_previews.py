"""Previews: the latent format's linear map to RGB, small JPEGs, and previews published by a real run."""

import asyncio
import io

import pytest
import torch
from PIL import Image

from workers.previews import LATENT_RGB, NoCheapPreview, cheap_rgb, latent_format, preview_image


def test_the_cheap_map_is_the_formats_linear_factors() -> None:
    latents = torch.zeros(2, 4, 3, 5)
    latents[0, 0] = 1.0  # only the first channel: each pixel gets its first row of factors
    rgb = cheap_rgb(latents, "sd")
    assert rgb.shape == (3, 5, 3) and rgb.dtype == torch.uint8
    expected = [round((factor + 1) / 2 * 255) for factor in LATENT_RGB["sd"][0][0]]
    assert rgb[1, 2].tolist() == expected
    assert cheap_rgb(torch.zeros(1, 4, 2, 2), "sdxl")[0, 0].tolist() == [
        round((bias + 1) / 2 * 255) for bias in LATENT_RGB["sdxl"][1]
    ]


def test_a_pixel_space_sample_is_its_own_preview() -> None:
    sample = torch.full((1, 3, 4, 4), -1.0)
    sample[0, 0] = 1.0  # red
    assert cheap_rgb(sample, "pixels")[0, 0].tolist() == [255, 0, 0]
    grey = cheap_rgb(torch.zeros(1, 1, 4, 4), "pixels")  # one channel: grey
    assert grey.shape == (4, 4, 3) and grey[0, 0].tolist() == [128, 128, 128]


def test_formats_of_real_pipelines(models_dir) -> None:
    from workers.pipelines import get_base_pipeline

    assert latent_format(get_base_pipeline("tiny-sd", "text2img")) == "sd"
    assert latent_format(get_base_pipeline("tiny-ddpm", "unconditional")) == "pixels"


def test_an_unknown_latent_format_says_so() -> None:
    class Vae:
        config = {"latent_channels": 16}

    class FluxPipeline:
        vae = Vae()

    with pytest.raises(NoCheapPreview, match="16-channel latents has no cheap preview"):
        latent_format(FluxPipeline())


def test_a_preview_is_a_small_jpeg_of_the_preview_size(models_dir) -> None:
    from workers.pipelines import get_base_pipeline

    pipe = get_base_pipeline("tiny-sd", "text2img")
    latents = torch.randn(1, 4, 64, 48, generator=torch.Generator().manual_seed(0))
    for mode in ("latent", "vae"):
        data = preview_image(latents, pipe, mode, 128)
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and max(image.size) == 128 and image.size[0] < image.size[1]
        assert len(data) < 16_000


def test_a_run_publishes_a_preview_every_n_steps_and_none_when_off(models_dir, database, broker, s3) -> None:
    from core.events import get_event_store, job_stream
    from tests.workers.test_job_events import queued_job
    from workers.tasks import run_job

    store = get_event_store()
    with_previews = queued_job(num_inference_steps=20, preview_every=5)
    without = queued_job(num_inference_steps=20)
    for job_id in (with_previews, without):
        assert run_job(str(job_id)) == f"job {job_id}: succeeded"

    events = asyncio.run(store.read(job_stream(with_previews), store.start, 0))
    previews = [e.data["step"] for e in events if e.kind == "preview"]
    assert previews == [5, 10, 15, 20]
    step, image, content_type = store.preview(with_previews)
    assert step == 20 and content_type == "image/jpeg" and Image.open(io.BytesIO(image)).size == (128, 128)

    events = asyncio.run(store.read(job_stream(without), store.start, 0))
    assert [e for e in events if e.kind == "preview"] == [] and store.preview(without) is None
