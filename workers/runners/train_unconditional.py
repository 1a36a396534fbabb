"""Train a UNet2DModel with a DDPMScheduler from scratch: the diffusers training tutorial, as a job.

Load the dataset, build the model, the noise scheduler, AdamW and a learning rate schedule with
warmup, hand them to accelerate's `Accelerator` (mixed precision, gradient accumulation), resume from
the job's last checkpoint if an earlier attempt left one, then train: add noise at random timesteps,
predict it, step on the MSE. Every `save_image_epochs` a sample grid, every `checkpointing_steps` a
checkpoint; at the end the `DDPMPipeline` is stored and registered under `output_model`.
"""

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from core.specs import TrainUnconditionalParams
from core.storage import put_folder
from core.tables import ModelKind
from workers.job_run import JobRun
from workers.training import Batch, TrainingLoop, accelerator_for, save_grid
from workers.training_data import load_training_images


def run(job: JobRun) -> list[dict[str, Any]]:
    params = job.params
    assert isinstance(params, TrainUnconditionalParams)
    with accelerator_for(
        job.settings.device, params.mixed_precision, params.gradient_accumulation_steps
    ) as accelerator:
        return train(job, params, accelerator)


def train(job: JobRun, params: TrainUnconditionalParams, accelerator: Any) -> list[dict[str, Any]]:
    assert job.output_model is not None and params.seed is not None  # the API sets both
    dataset = load_training_images(params.dataset, params.image_size, job.storage)
    loop = TrainingLoop(job, params, accelerator, num_images=len(dataset))

    torch.manual_seed(params.seed)  # the initial weights
    model = UNet2DModel(
        sample_size=params.image_size,
        in_channels=3,
        out_channels=3,
        layers_per_block=params.layers_per_block,
        block_out_channels=tuple(params.block_out_channels),
        down_block_types=tuple(params.down_block_types),
        up_block_types=tuple(params.up_block_types),
        norm_num_groups=params.norm_num_groups,
    )
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=params.num_train_timesteps, beta_schedule=params.beta_schedule
    )
    model = loop.prepare(model, model.parameters())
    ema = None
    if params.use_ema:
        ema = EMAModel(
            accelerator.unwrap_model(model).parameters(),
            decay=params.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=params.ema_inv_gamma,
            power=params.ema_power,
            model_cls=UNet2DModel,
            model_config=accelerator.unwrap_model(model).config,
        )
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    def compute_loss(batch: Batch) -> torch.Tensor:
        """Add noise at random timesteps to the clean images; the MSE of the model's prediction of it."""
        clean_images = batch.pixel_values
        noise = torch.randn(clean_images.shape, generator=loop.generator, device=accelerator.device)
        timesteps = torch.randint(
            0,
            noise_scheduler.config.num_train_timesteps,
            (clean_images.shape[0],),
            generator=loop.generator,
            device=accelerator.device,
        )
        noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)
        noise_pred = model(noisy_images, timesteps, return_dict=False)[0]
        return F.mse_loss(noise_pred.float(), noise)

    def after_step() -> None:
        if ema is not None:
            ema.step(model.parameters())

    def at_epoch_end(epoch: int, step: int, last: bool) -> None:
        """A sample grid every `save_image_epochs` and at the end; a snapshot every `save_model_epochs`."""
        if (epoch + 1) % params.save_image_epochs == 0 or last:
            with ema_weights(ema, model):
                images = sample(
                    accelerator.unwrap_model(model), noise_scheduler, params, loop.reporter.poll_cancel
                )
            grid_parameters = {"type": job.type, "job": str(job.job_id), "seed": params.seed}
            loop.reporter.add_output(save_grid(job.storage, job.job_id, images, epoch, step, grid_parameters))
        if (epoch + 1) % params.save_model_epochs == 0 and not last:
            with ema_weights(ema, model):
                loop.reporter.add_output(
                    snapshot(job, accelerator.unwrap_model(model), noise_scheduler, epoch)
                )

    loop.run(dataset, compute_loss, after_step=after_step, at_epoch_end=at_epoch_end)

    with ema_weights(ema, model), tempfile.TemporaryDirectory(prefix="diffq-model-") as folder:
        pipeline = DDPMPipeline(unet=accelerator.unwrap_model(model), scheduler=noise_scheduler)
        pipeline.save_pretrained(folder, safe_serialization=True)
        return loop.store(Path(folder), "model_index.json", ModelKind.UNCONDITIONAL)


@contextmanager
def ema_weights(ema: EMAModel | None, model: torch.nn.Module) -> Iterator[None]:
    """Within the block, the model holds its EMA weights (if the job keeps an EMA)."""
    if ema is None:
        yield
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield
    finally:
        ema.restore(model.parameters())


def sample(
    unet: UNet2DModel,
    noise_scheduler: DDPMScheduler,
    params: TrainUnconditionalParams,
    after_step: Callable[[], None] | None = None,
) -> list:
    """`eval_batch_size` images from the model as it is now; its own generator leaves training's alone.

    `after_step()` runs after each of the `sample_inference_steps` denoising steps: the job's cancel
    check (`ProgressReporter.poll_cancel`, which raises JobCanceled), since a 1000-step grid of 16
    images takes minutes. `DDPMPipeline` takes no step callback, so it runs from this call's scheduler's
    `step`.
    """
    scheduler = DDPMScheduler.from_config(noise_scheduler.config)
    if after_step is not None:
        scheduler_step = scheduler.step

        def step(*args: Any, **kwargs: Any) -> Any:
            result = scheduler_step(*args, **kwargs)
            after_step()
            return result

        scheduler.step = step  # type: ignore[method-assign]
    pipeline = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    unet.eval()
    try:
        return pipeline(
            batch_size=params.eval_batch_size,
            generator=torch.Generator("cpu").manual_seed(params.seed),
            num_inference_steps=params.sample_inference_steps,
        ).images
    finally:
        unet.train()


def snapshot(job: JobRun, unet: UNet2DModel, noise_scheduler: DDPMScheduler, epoch: int) -> dict[str, Any]:
    """Store the pipeline as it is after `epoch` (the tutorial's `save_model_epochs`)."""
    prefix = f"jobs/{job.job_id}/snapshots/epoch-{epoch:04d}"
    with tempfile.TemporaryDirectory(prefix="diffq-snapshot-") as folder:
        DDPMPipeline(unet=unet, scheduler=noise_scheduler).save_pretrained(folder, safe_serialization=True)
        put_folder(job.storage, Path(folder), prefix)
    return {
        "kind": "model_snapshot",
        "key": f"{prefix}/model_index.json",
        "content_type": "application/json",
        "epoch": epoch,
    }
