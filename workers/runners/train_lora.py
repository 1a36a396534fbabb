"""LoRA fine-tuning of a Stable-Diffusion-family UNet on image–caption pairs, as diffusers'
`train_text_to_image_lora.py` does it.

Load the base pipeline's components and freeze them, add a peft LoRA adapter to the UNet's attention
projections and train only its weights: encode the images to latents with the VAE, the captions with
the text encoder, add noise at random timesteps, step on the MSE to the scheduler's target. The result
is a `pytorch_lora_weights.safetensors` that `load_lora_weights` accepts, registered under
`output_model` with its base model; a `text2img` job applies it with `params.lora`.
"""

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers, convert_unet_state_dict_to_peft
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from core.errors import BadModel, first_line
from core.specs import TrainLoraParams
from core.tables import ModelKind
from models_store.registered import resolve_job_model
from workers.job_run import JobRun
from workers.training import Batch, TrainingLoop, accelerator_for, save_grid
from workers.training_data import load_training_images

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def run(job: JobRun) -> list[dict[str, Any]]:
    params = job.params
    assert isinstance(params, TrainLoraParams)
    with accelerator_for(
        job.settings.device, params.mixed_precision, params.gradient_accumulation_steps
    ) as accelerator:
        return train(job, params, accelerator)


def train(job: JobRun, params: TrainLoraParams, accelerator: Any) -> list[dict[str, Any]]:
    assert job.model is not None and job.output_model is not None and params.seed is not None
    base = load_base(job.model, job)
    tokenizer, text_encoder, vae, unet = base.tokenizer, base.text_encoder, base.vae, base.unet
    noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
    for frozen in (text_encoder, vae, unet):
        frozen.requires_grad_(False)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(params.mixed_precision, torch.float32)
    for module in (text_encoder, vae, unet):
        module.to(accelerator.device)
        if weight_dtype != torch.float32:
            module.to(dtype=weight_dtype)

    torch.manual_seed(params.seed)  # the LoRA's initial weights
    unet.add_adapter(
        LoraConfig(
            r=params.rank, lora_alpha=params.rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS
        )
    )
    cast_training_params(unet, dtype=torch.float32)  # the trained weights stay fp32 under mixed precision
    lora_parameters = [p for p in unet.parameters() if p.requires_grad]

    dataset = load_training_images(
        params.dataset,
        params.resolution,
        job.storage,
        caption_column=params.caption_column,
        need_captions=True,
    )
    input_ids = tokenizer(
        dataset.captions,
        max_length=tokenizer.model_max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    ).input_ids
    loop = TrainingLoop(job, params, accelerator, num_images=len(dataset))
    unet = loop.prepare(unet, lora_parameters)
    # Checkpoints hold the LoRA weights only, not the frozen UNet.
    accelerator.register_save_state_pre_hook(save_lora_hook(accelerator))
    accelerator.register_load_state_pre_hook(load_lora_hook)

    def compute_loss(batch: Batch) -> torch.Tensor:
        """Latents of the images and embeddings of their captions; noise added at random timesteps;
        the MSE of the UNet's prediction to the scheduler's target."""
        with torch.no_grad():
            latents = vae.encode(batch.pixel_values.to(weight_dtype)).latent_dist.sample(
                generator=loop.generator
            )
            latents = latents * vae.config.scaling_factor
            encoder_hidden_states = text_encoder(
                input_ids[batch.indices].to(accelerator.device), return_dict=False
            )[0]
        noise = torch.randn(
            latents.shape, generator=loop.generator, device=latents.device, dtype=latents.dtype
        )
        timesteps = torch.randint(
            0,
            noise_scheduler.config.num_train_timesteps,
            (latents.shape[0],),
            generator=loop.generator,
            device=latents.device,
        )
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
        return F.mse_loss(model_pred.float(), target.float())

    reporter = loop.run(dataset, compute_loss)

    unet = accelerator.unwrap_model(unet)
    if params.validation_prompt:
        base.unet = unet
        with accelerator.autocast():
            images = validation_images(base, params, reporter.poll_cancel)
        grid_parameters = {"type": job.type, "job": str(job.job_id), "prompt": params.validation_prompt}
        reporter.add_output(
            save_grid(job.storage, job.job_id, images, loop.epoch, loop.step, grid_parameters)
        )

    with tempfile.TemporaryDirectory(prefix="diffq-lora-") as folder:
        StableDiffusionPipeline.save_lora_weights(
            folder, unet_lora_layers=lora_layers(unet), weight_name=LORA_WEIGHTS, safe_serialization=True
        )
        return loop.store(Path(folder), LORA_WEIGHTS, ModelKind.LORA, base_model=job.model)


def load_base(model_ref: str, job: JobRun) -> StableDiffusionPipeline:
    """The base model's components, in float32 on the CPU, for training (not the worker's cached pipeline,
    which must stay as it is for generation jobs)."""
    folder = resolve_job_model(model_ref, job.settings.models_dir)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            folder,
            dtype=torch.float32,
            use_safetensors=True,
            safety_checker=None,
            requires_safety_checker=False,
        )
    except (OSError, ValueError, TypeError) as error:
        raise BadModel(
            f"cannot load '{model_ref}' as a Stable Diffusion pipeline for LoRA training: "
            f"{type(error).__name__}: {first_line(error)}"
        ) from error
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lora_layers(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's LoRA weights, named as diffusers' LoRA files name them."""
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def save_lora_hook(accelerator: Any):
    def save(models: list, weights: list, output_dir: str) -> None:
        for model in models:
            StableDiffusionPipeline.save_lora_weights(
                output_dir,
                unet_lora_layers=lora_layers(accelerator.unwrap_model(model)),
                safe_serialization=True,
            )
            weights.pop()  # accelerate would save the whole UNet otherwise

    return save


def load_lora_hook(models: list, input_dir: str) -> None:
    while models:
        unet = models.pop()  # accelerate would load the whole UNet otherwise
        state_dict, _ = StableDiffusionPipeline.lora_state_dict(input_dir)
        unet_state = {k.removeprefix("unet."): v for k, v in state_dict.items() if k.startswith("unet.")}
        set_peft_model_state_dict(unet, convert_unet_state_dict_to_peft(unet_state), adapter_name="default")


def validation_images(
    pipe: StableDiffusionPipeline, params: TrainLoraParams, after_step: Callable[[], None] | None = None
) -> list:
    """Images of the validation prompt with the trained LoRA, image i seeded `seed + i`. `after_step()`
    runs after each denoising step: the job's cancel check (`ProgressReporter.poll_cancel`, which raises
    JobCanceled), so that a cancel stops the images at the next step."""
    assert params.seed is not None and params.validation_prompt is not None

    def on_step_end(pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict) -> dict:
        if after_step is not None:
            after_step()
        return callback_kwargs

    return pipe(
        callback_on_step_end=on_step_end,
        prompt=params.validation_prompt,
        num_inference_steps=params.validation_inference_steps,
        width=params.resolution,
        height=params.resolution,
        num_images_per_prompt=params.num_validation_images,
        generator=[
            torch.Generator("cpu").manual_seed(params.seed + i) for i in range(params.num_validation_images)
        ],
    ).images
