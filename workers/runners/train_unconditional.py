"""Train a UNet2DModel with a DDPMScheduler from scratch: the diffusers training tutorial, as a job.

Load the dataset, build the model, the noise scheduler, AdamW and a learning rate schedule with
warmup, hand them to accelerate's `Accelerator` (mixed precision, gradient accumulation), resume from
the job's last checkpoint if an earlier attempt left one, then train: add noise at random timesteps,
predict it, step on the MSE. Every `save_image_epochs` a sample grid, every `checkpointing_steps` a
checkpoint; at the end the `DDPMPipeline` is stored and registered under `output_model`.
"""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from core.jobs import forget_metrics_after
from core.model_registry import register_model
from core.progress import JobCanceled
from core.specs import TrainUnconditionalParams
from core.storage import put_folder
from core.tables import ModelKind
from workers.job_run import JobRun
from workers.training import (
    Checkpoints,
    TrainingPlan,
    TrainingState,
    accelerator_for,
    epoch_order,
    save_grid,
    store_model,
)
from workers.training_data import load_training_images


def run(job: JobRun) -> list[dict[str, Any]]:
    params = TrainUnconditionalParams.model_validate(job.params)
    with accelerator_for(
        job.settings.device, params.mixed_precision, params.gradient_accumulation_steps
    ) as accelerator:
        return train(job, params, accelerator)


def train(job: JobRun, params: TrainUnconditionalParams, accelerator: Any) -> list[dict[str, Any]]:
    assert job.output_model is not None and params.seed is not None  # the API sets both
    dataset = load_training_images(params.dataset, params.image_size, job.storage)
    plan = TrainingPlan(
        num_images=len(dataset),
        train_batch_size=params.train_batch_size,
        gradient_accumulation_steps=params.gradient_accumulation_steps,
        num_epochs=params.num_epochs,
        max_train_steps=params.max_train_steps,
    )

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
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.learning_rate)
    lr_scheduler = get_scheduler(
        params.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=params.lr_warmup_steps,
        num_training_steps=plan.total_steps,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
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
    state = TrainingState(torch.Generator(device=accelerator.device).manual_seed(params.seed))
    accelerator.register_for_checkpointing(state)

    checkpoints = Checkpoints(job.storage, job.job_id, keep=params.checkpoints_total_limit)
    step = checkpoints.resume(accelerator)  # 0 on a first attempt
    first_epoch, first_batch = plan.position(step)
    reporter = job.start_training_progress(total=plan.total_steps, start_step=step)
    # An earlier attempt's steps past it.
    forgot = forget_metrics_after(job.session, job.job_id, job.attempt, step)
    job.session.commit()
    if not forgot:
        raise JobCanceled(str(job.job_id))

    model.train()
    loss_sum = 0.0  # over the batches of one optimizer step
    for epoch in range(first_epoch, plan.epochs):
        order, flips = epoch_order(params.seed, epoch, len(dataset))
        for batch in range(first_batch if epoch == first_epoch else 0, plan.batches_per_epoch):
            indices = order[batch * params.train_batch_size : (batch + 1) * params.train_batch_size]
            clean_images = dataset.batch(indices, flips[indices] & params.random_flip, accelerator.device)
            noise = torch.randn(clean_images.shape, generator=state.generator, device=accelerator.device)
            timesteps = torch.randint(
                0,
                noise_scheduler.config.num_train_timesteps,
                (clean_images.shape[0],),
                generator=state.generator,
                device=accelerator.device,
            )
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)

            with accelerator.accumulate(model):
                noise_pred = model(noisy_images, timesteps, return_dict=False)[0]
                loss = F.mse_loss(noise_pred.float(), noise)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                step_lr = lr_scheduler.get_last_lr()[0]  # the rate this step uses
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            loss_sum += loss.detach().item()

            if accelerator.sync_gradients:
                if ema is not None:
                    ema.step(model.parameters())
                step = state.step = step + 1
                mean_loss = loss_sum / params.gradient_accumulation_steps
                loss_sum = 0.0
                reporter.log_step(step, epoch=epoch, loss=mean_loss, lr=step_lr)
                if step % params.checkpointing_steps == 0 and step < plan.total_steps:
                    reporter.flush()  # the metrics up to here are stored before the checkpoint names them
                    reporter.add_output(checkpoints.save(accelerator, step))
                if step == plan.total_steps:
                    break

        last_epoch = step == plan.total_steps
        if (epoch + 1) % params.save_image_epochs == 0 or last_epoch:
            with ema_weights(ema, model):
                images = sample(accelerator.unwrap_model(model), noise_scheduler, params)
            grid_parameters = {"type": job.type, "job": str(job.job_id), "seed": params.seed}
            reporter.add_output(save_grid(job.storage, job.job_id, images, epoch, step, grid_parameters))
        if (epoch + 1) % params.save_model_epochs == 0 and not last_epoch:
            with ema_weights(ema, model):
                reporter.add_output(snapshot(job, accelerator.unwrap_model(model), noise_scheduler, epoch))
        if reporter.outputs_changed:
            reporter.flush()  # list the new grid or snapshot on the job now
        if last_epoch:
            break

    with ema_weights(ema, model), tempfile.TemporaryDirectory(prefix="diffq-model-") as folder:
        pipeline = DDPMPipeline(unet=accelerator.unwrap_model(model), scheduler=noise_scheduler)
        pipeline.save_pretrained(folder, safe_serialization=True)
        prefix, model_output = store_model(
            job.storage, job.job_id, job.output_model, Path(folder), "model_index.json"
        )
    registered = register_model(
        job.session,
        job_id=job.job_id,
        attempt=job.attempt,
        name=job.output_model,
        kind=ModelKind.UNCONDITIONAL,
        storage_prefix=prefix,
        overwrite=job.overwrite_output_model,
    )
    job.session.commit()
    if not registered:
        raise JobCanceled(str(job.job_id))
    return reporter.outputs + [model_output]


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


def sample(unet: UNet2DModel, noise_scheduler: DDPMScheduler, params: TrainUnconditionalParams) -> list:
    """`eval_batch_size` images from the model as it is now; its own generator leaves training's alone."""
    pipeline = DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(noise_scheduler.config))
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
