"""Unconditional generation with a UNet2DModel and its scheduler (a DDPMPipeline folder).

DDPMPipeline has no step callback, so the denoising loop is written out here, as in the diffusers
quick tour: progress is reported and a cancel stops the loop at every step. With the model's own
scheduler it makes the same images as `DDPMPipeline.__call__` with the same seeds; with another, the
loop scales the input and the initial noise as that scheduler asks (identity for DDPM and DDIM).
"""

import inspect
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor

from core.schedulers import make_scheduler
from core.specs import UnconditionalParams, new_seed
from workers.job_run import JobRun, check_finite
from workers.pipelines import get_pipeline


def run(job: JobRun) -> list[dict[str, Any]]:
    params = job.params
    assert isinstance(params, UnconditionalParams)
    assert job.model is not None
    pipe = get_pipeline(job.model, "unconditional", params.scheduler, steps=params.num_inference_steps)
    unet = pipe.unet
    # The job's own scheduler: a cached pipeline's scheduler is shared and keeps state.
    scheduler = make_scheduler(params.scheduler, pipe.scheduler)
    seed = params.seed if params.seed is not None else new_seed(params.num_images)
    seeds = [seed + index for index in range(params.num_images)]
    generator = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    # Ancestral schedulers draw noise at each step; the others take no generator.
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if takes_generator else {}

    size = unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    shape = (params.num_images, unet.config.in_channels, height, width)
    image = randn_tensor(shape, generator=generator, device=unet.device, dtype=unet.dtype)
    scheduler.set_timesteps(params.num_inference_steps)
    image = image * scheduler.init_noise_sigma

    reporter = job.start_progress(total=len(scheduler.timesteps))
    with torch.inference_mode():
        for step, t in enumerate(scheduler.timesteps, start=1):
            model_output = unet(scheduler.scale_model_input(image, t), t).sample
            image = scheduler.step(model_output, t, image, **step_kwargs).prev_sample
            check_finite(image, f"the samples at step {step}")
            reporter.update(step)
            job.maybe_preview(step, image, pipe)

    array = (image / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    images = pipe.numpy_to_pil(array)
    parameters = [
        {
            "type": job.type,
            "model": job.model,
            "params": {
                "num_inference_steps": params.num_inference_steps,
                "seed": s,
                "num_images": 1,
                "scheduler": params.scheduler,
            },
        }
        for s in seeds
    ]
    return job.save_images(images, parameters)
