"""Inpainting: repaint the white part of `mask_image` under the prompt and keep the black part.

`AutoPipelineForInpainting` picks the pipeline for the model's family; it works with inpainting
checkpoints (a UNet with 9 input channels) and with regular ones (4 channels, blending the kept part
back in the latents at each step). Image i is made with a CPU generator seeded `seed + i`.

The image and mask are passed once per output: the pipeline encodes each image of its batch with that
image's generator, so each output draws from its generator exactly as a call for it alone would.
"""

from typing import Any

import torch

from core.images import round_size
from core.specs import InpaintParams, new_seed
from workers.job_run import JobRun, check_fits, pipeline_call
from workers.pipelines import get_pipeline


def run(job: JobRun) -> list[dict[str, Any]]:
    params = job.params
    assert isinstance(params, InpaintParams)
    assert job.model is not None
    pipe = get_pipeline(
        job.model, "inpaint", params.scheduler, steps=params.num_inference_steps, strength=params.strength
    )
    image = job.load_image(params.image)
    mask = job.load_image(params.mask_image, "mask")
    width, height = round_size(*params.output_size(image.size))
    check_fits(pipe, width, height, params.num_images * (2 if params.guidance_scale > 1 else 1))
    seed = params.seed if params.seed is not None else new_seed(params.num_images)
    seeds = [seed + index for index in range(params.num_images)]

    reporter = job.start_diffusers_progress(pipe, params.num_inference_steps, params.strength)
    with pipeline_call():
        result = pipe(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt or None,
            image=[image] * params.num_images,
            mask_image=[mask] * params.num_images,
            strength=params.strength,
            width=width,
            height=height,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            num_images_per_prompt=params.num_images,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            callback_on_step_end=job.diffusers_callback(reporter),
            output_type="np",
        )

    base = params.model_dump(mode="json", exclude={"num_images", "seed"}) | {"width": width, "height": height}
    parameters = [
        {"type": job.type, "model": job.model, "params": base | {"seed": s, "num_images": 1}} for s in seeds
    ]
    return job.save_images(job.decoded_images(result.images), parameters)
