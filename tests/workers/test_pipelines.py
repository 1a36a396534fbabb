"""Modes share one loaded model: a second mode is built around the cached modules, never reloaded."""

import torch

from workers.pipelines import get_base_pipeline, get_cache, get_pipeline


def test_a_second_mode_reuses_the_loaded_weights(models_dir) -> None:
    text2img = get_pipeline("tiny-sd", "text2img")
    cache = get_cache()
    misses, resident = cache.misses, cache.resident()

    img2img = get_pipeline("tiny-sd", "img2img", "euler")
    inpaint = get_pipeline("tiny-sd", "inpaint")
    assert (cache.misses, cache.resident()) == (misses, resident)
    assert type(img2img).__name__ == "StableDiffusionImg2ImgPipeline"
    assert type(inpaint).__name__ == "StableDiffusionInpaintPipeline"
    for module in ("unet", "vae", "text_encoder", "tokenizer"):
        assert getattr(img2img, module) is getattr(text2img, module) is getattr(inpaint, module), module


def test_each_job_gets_a_scheduler_of_its_own(models_dir) -> None:
    base = get_base_pipeline("tiny-sd", "text2img")
    first = get_pipeline("tiny-sd", "text2img", "euler_a")
    second = get_pipeline("tiny-sd", "text2img", "euler_a")
    default = get_pipeline("tiny-sd", "text2img")
    assert first is not second and first.unet is second.unet is base.unet
    assert first.scheduler is not second.scheduler
    assert type(first.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    # Without a name, a copy of the model's own: the cached pipeline's scheduler is never handed out.
    assert type(default.scheduler) is type(base.scheduler) and default.scheduler is not base.scheduler
    assert type(base.scheduler).__name__ == "PNDMScheduler"
    assert base.unet.dtype == torch.float32
