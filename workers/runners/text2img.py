"""Text-to-image: a Stable-Diffusion-family pipeline, one batched call, one PNG per image; with
`params.lora`, a registered LoRA is applied for this job and unloaded after it.

Image i is made with a CPU generator seeded `seed + i`, so each image equals a direct diffusers
call with that seed (and scheduler) and can be remade alone.
"""

from typing import Any

import torch

from core.specs import Text2ImgParams, new_seed
from workers.job_run import JobRun
from workers.lora import lora_applied
from workers.pipelines import get_pipeline


def run(job: JobRun) -> list[dict[str, Any]]:
    params = job.params
    assert isinstance(params, Text2ImgParams)
    assert job.model is not None
    pipe = get_pipeline(job.model, "text2img", params.scheduler, steps=params.num_inference_steps)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    width, height = params.width or native, params.height or native
    seed = params.seed if params.seed is not None else new_seed(params.num_images)
    seeds = [seed + index for index in range(params.num_images)]

    reporter = job.start_diffusers_progress(pipe, params.num_inference_steps)
    with lora_applied(pipe, params.lora):
        result = pipe(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt or None,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            width=width,
            height=height,
            num_images_per_prompt=params.num_images,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            callback_on_step_end=job.diffusers_callback(reporter),
            output_type="np",
        )

    base = params.model_dump(exclude={"num_images", "seed"}) | {"width": width, "height": height}
    parameters = [
        {"type": job.type, "model": job.model, "params": base | {"seed": s, "num_images": 1}} for s in seeds
    ]
    return job.save_images(job.decoded_images(result.images), parameters)
