"""Text-to-image: a Stable-Diffusion-family pipeline, one batched call, one PNG per image; with
`params.lora`, a registered LoRA is applied for this job and unloaded after it.

Image i is made with a CPU generator seeded `seed + i`, so each image equals a direct diffusers
call with that seed (and scheduler) and can be remade alone.

Several jobs with the same fusion key (core/fusion.py) run as one call (`run_group`): one prompt,
negative prompt and generator per image, so each image is the one its job would make alone (batching
changes the arithmetic's order, not the result beyond a grey level). Each job keeps its own progress,
outputs, error and cancel: a job canceled (or gone NaN) mid-call is dropped from what is written and
stored, while the call goes on for the others.
"""

from dataclasses import dataclass
from typing import Any

import torch

from core.errors import JobError
from core.progress import JobCanceled, ProgressReporter
from core.specs import Text2ImgParams, new_seed
from workers.job_run import JobRun, check_finite, check_fits, pipeline_call
from workers.lora import lora_applied
from workers.pipelines import get_pipeline

# What became of one job of a call: its output records, or the exception that ended it.
Outcome = list[dict[str, Any]] | BaseException


@dataclass
class Member:
    """One job of a call: where its images are in the batch, and how it has ended, if it has."""

    job: JobRun
    params: Text2ImgParams
    seeds: list[int]
    offset: int
    reporter: ProgressReporter | None = None
    ended: BaseException | None = None

    @property
    def images(self) -> slice:
        return slice(self.offset, self.offset + len(self.seeds))


def run(job: JobRun) -> list[dict[str, Any]]:
    """One job alone: a call of one."""
    [outcome] = run_group([job])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def run_group(jobs: list[JobRun]) -> list[Outcome]:
    """Run `jobs` (all with one fusion key) as one pipeline call; each one's outcome, in order.

    Raises what ends the call itself (out of memory, a bad model), and, when every job has ended during
    the call, the first one's reason (so a job alone stops at once when canceled)."""
    first = jobs[0]
    params = first.params
    assert isinstance(params, Text2ImgParams) and first.model is not None
    pipe = get_pipeline(first.model, "text2img", params.scheduler, steps=params.num_inference_steps)
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    width, height = params.width or native, params.height or native
    members: list[Member] = []
    for job in jobs:
        job_params = job.params
        assert isinstance(job_params, Text2ImgParams)
        seed = job_params.seed if job_params.seed is not None else new_seed(job_params.num_images)
        seeds = [seed + index for index in range(job_params.num_images)]
        offset = members[-1].images.stop if members else 0
        members.append(Member(job, job_params, seeds, offset))
    for member in members:
        try:
            member.reporter = member.job.start_diffusers_progress(pipe, params.num_inference_steps)
        except JobCanceled as canceled:
            member.ended = canceled
    _stop_if_all_ended(members)

    check_fits(pipe, width, height, members[-1].images.stop * (2 if params.guidance_scale > 1 else 1))
    prompts = [m.params.prompt for m in members for _ in m.seeds]
    negative = [m.params.negative_prompt for m in members for _ in m.seeds]
    with lora_applied(pipe, params.lora), pipeline_call():
        result = pipe(
            prompt=prompts,
            # "" is what diffusers uses for no negative prompt; None keeps a call of one job as it was.
            negative_prompt=negative if any(negative) else None,
            num_inference_steps=params.num_inference_steps,
            guidance_scale=params.guidance_scale,
            width=width,
            height=height,
            num_images_per_prompt=1,
            generator=[torch.Generator("cpu").manual_seed(s) for m in members for s in m.seeds],
            callback_on_step_end=_on_step_end(members),
            output_type="np",
        )

    outcomes: list[Outcome] = []
    for member in members:
        if member.ended is not None:
            outcomes.append(member.ended)
            continue
        job = member.job
        base = member.params.model_dump(exclude={"num_images", "seed"}) | {"width": width, "height": height}
        parameters = [
            {"type": job.type, "model": job.model, "params": base | {"seed": s, "num_images": 1}}
            for s in member.seeds
        ]
        try:
            outcomes.append(job.save_images(job.decoded_images(result.images[member.images]), parameters))
        except (JobCanceled, JobError) as ended:
            outcomes.append(ended)
    return outcomes


def _on_step_end(members: list[Member]):
    """A `callback_on_step_end` that checks each job's latents and records its step; a job that ends
    (canceled, or its latents NaN) is left out from then on."""

    def on_step_end(pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        latents = callback_kwargs["latents"]
        # One reduction and one read for the whole batch: which images are still finite.
        finite = torch.isfinite(latents).flatten(1).all(dim=1).tolist()
        for member in members:
            if member.ended is not None or member.reporter is None:
                continue
            try:
                if not all(finite[member.images]):
                    check_finite(latents[member.images], f"the latents at step {step_index + 1}")
                # Schedulers may run more or fewer steps than asked (PNDM adds one): the pipeline knows.
                member.reporter.total = getattr(pipe, "num_timesteps", None) or member.reporter.total
                member.reporter.update(step_index + 1)
                # This job's own images (with classifier-free guidance the pipeline's latents are the
                # images themselves, not the doubled model input).
                member.job.maybe_preview(step_index + 1, latents[member.images], pipe)
            except (JobCanceled, JobError) as ended:
                member.ended = ended
        _stop_if_all_ended(members)
        return callback_kwargs

    return on_step_end


def _stop_if_all_ended(members: list[Member]) -> None:
    if all(member.ended is not None for member in members):
        raise members[0].ended  # type: ignore[misc]
