"""Image-to-image: the input image is noised to `strength` and denoised back under the prompt.

`AutoPipelineForImage2Image` picks the pipeline for the model's family (SD 1.x/2.x, SDXL). It runs
int(num_inference_steps × strength) of the scheduler's steps, and progress counts those. Image i is
made with a CPU generator seeded `seed + i` (for the VAE's sample and the noise alike), so it equals a
direct diffusers call with that seed.
"""

from typing import Any

import torch

from core.images import fit_image
from core.specs import Img2ImgParams, new_seed
from workers.job_run import JobRun, check_fits, pipeline_call
from workers.pipelines import get_pipeline


def run(job: JobRun) -> list[dict[str, Any]]:
    params = job.params
    assert isinstance(params, Img2ImgParams)
    assert job.model is not None
    pipe = get_pipeline(
        job.model, "img2img", params.scheduler, steps=params.num_inference_steps, strength=params.strength
    )
    image = fit_image(job.load_image(params.image))
    check_fits(pipe, *image.size, params.num_images * (2 if params.guidance_scale > 1 else 1))
    seed = params.seed if params.seed is not None else new_seed(params.num_images)
    seeds = [seed + index for index in range(params.num_images)]

    reporter = job.start_diffusers_progress(pipe, params.num_inference_steps, params.strength)
    with pipeline_call():
        result = pipe(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt or None,
            image=image,
            strength=params.strength,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            num_images_per_prompt=params.num_images,
            generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            callback_on_step_end=job.diffusers_callback(reporter),
            output_type="np",
        )

    base = params.model_dump(mode="json", exclude={"num_images", "seed"})
    parameters = [
        {"type": job.type, "model": job.model, "params": base | {"seed": s, "num_images": 1}} for s in seeds
    ]
    return job.save_images(job.decoded_images(result.images), parameters)
