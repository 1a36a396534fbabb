"""Depth-guided image-to-image (`StableDiffusionDepth2ImgPipeline`, as in stable-diffusion-2-depth).

The UNet sees the depth of the input image as a fifth channel, so the output keeps its layout. The
depth comes from the model's own estimator (a DPT), or from `depth_map`: a greyscale image of the
input's size, brighter nearer, which the pipeline scales to the latents' size and to [-1, 1] as it
does its estimator's output. Image i is made with a CPU generator seeded `seed + i`.
"""

from typing import Any

import numpy as np
import torch
from PIL import Image

from core.errors import BadInput
from core.images import fit_image
from core.specs import Depth2ImgParams, new_seed
from core.uploads import FLAT_DEPTH_MAP
from workers.job_run import JobRun, check_fits, pipeline_call
from workers.pipelines import get_pipeline


def depth_tensor(depth_map: Image.Image) -> torch.Tensor:
    """A depth image as the (1, height, width) float tensor the pipeline takes; 16-bit maps keep their
    precision, colour ones become their luminance."""
    depth = torch.from_numpy(np.array(depth_map.convert("F"), dtype=np.float32))[None]
    if depth.min() == depth.max():  # diffusers divides by (max - min): every latent would be NaN
        raise BadInput(FLAT_DEPTH_MAP)
    return depth


def run(job: JobRun) -> list[dict[str, Any]]:
    params = job.params
    assert isinstance(params, Depth2ImgParams)
    assert job.model is not None
    pipe = get_pipeline(
        job.model, "depth2img", params.scheduler, steps=params.num_inference_steps, strength=params.strength
    )
    image = fit_image(job.load_image(params.image))
    check_fits(pipe, *image.size, params.num_images * (2 if params.guidance_scale > 1 else 1))
    depth_map = depth_tensor(job.load_image(params.depth_map, "depth")) if params.depth_map else None
    seed = params.seed if params.seed is not None else new_seed(params.num_images)
    seeds = [seed + index for index in range(params.num_images)]

    reporter = job.start_diffusers_progress(pipe, params.num_inference_steps, params.strength)
    with pipeline_call():
        result = pipe(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt or None,
            image=image,
            depth_map=depth_map,
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
