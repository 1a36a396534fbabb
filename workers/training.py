"""What the training runners share: the Accelerator, the data order, checkpoints and sample grids.

Resuming must end with the same weights as a run that was never interrupted, so everything random
is either derived from the seed alone or saved in the checkpoint:

- the order of the images and their flips in epoch `e` come from a generator seeded `(seed, e)`,
  so a run resumed mid-epoch draws the same batches;
- the noise and timesteps come from one `torch.Generator` whose state is checkpointed with the
  step (`TrainingState`), next to what `Accelerator.save_state` keeps (model, optimizer, learning
  rate scheduler, EMA, torch's global RNG, the gradient accumulation counter).

A checkpoint is written to `checkpoints/<job>/step-<n>/` file by file, then `latest.json` names it:
the pointer is written last, so a worker that dies halfway leaves the previous checkpoint in force.
"""

import json
import logging
import math
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.errors import BadInput
from core.images import encode_png
from core.jobs import forget_metrics_after
from core.model_registry import model_prefix, register_model
from core.progress import JobCanceled, TrainingReporter
from core.specs import TrainingParams
from core.storage import Storage, get_folder, put_folder
from core.tables import ModelKind
from models_store.load import pick_device
from workers.job_run import JobRun
from workers.training_data import TrainingImages

LATEST = "latest.json"
logger = logging.getLogger(__name__)


@contextmanager
def accelerator_for(
    device_setting: str, mixed_precision: str, gradient_accumulation_steps: int
) -> Iterator[Any]:
    """An `Accelerator` on the worker's device, reset when the job ends.

    accelerate keeps its state in process-wide singletons, and a worker process runs many jobs, each
    with its own mixed precision: the state is dropped after each so that the next job sets its own.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    device = pick_device(device_setting)
    if mixed_precision == "fp16" and device.type != "cuda":
        raise BadInput(
            f"mixed_precision 'fp16' needs a CUDA GPU, and this worker trains on {device.type}; "
            "use 'bf16' or 'no'"
        )
    if device.type == "cuda" and device.index not in (None, torch.cuda.current_device()):
        torch.cuda.set_device(device)
    try:
        yield Accelerator(
            mixed_precision=mixed_precision,
            gradient_accumulation_steps=gradient_accumulation_steps,
            cpu=device.type == "cpu",
        )
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@dataclass
class TrainingPlan:
    """How many optimizer steps a job runs, and where a step falls in the epochs.

    Batches are drawn epoch after epoch and `gradient_accumulation_steps` of them make one optimizer
    step, so a step may span the end of an epoch.
    """

    num_images: int
    train_batch_size: int
    gradient_accumulation_steps: int
    num_epochs: int
    max_train_steps: int | None

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.num_images / self.train_batch_size)

    @property
    def total_steps(self) -> int:
        if self.max_train_steps is not None:
            return self.max_train_steps
        return max(1, self.num_epochs * self.batches_per_epoch // self.gradient_accumulation_steps)

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps * self.gradient_accumulation_steps / self.batches_per_epoch)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within it) where the run resumes after `step` optimizer steps."""
        return divmod(step * self.gradient_accumulation_steps, self.batches_per_epoch)


def epoch_order(seed: int, epoch: int, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The shuffled image indices of an epoch, and which images it flips; depends only on the seed."""
    rng = np.random.default_rng([seed, epoch])
    return torch.from_numpy(rng.permutation(num_images)), torch.from_numpy(rng.random(num_images) < 0.5)


@dataclass
class TrainingState:
    """The run's own checkpointed state: its optimizer step and its noise generator."""

    generator: torch.Generator
    step: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])


@dataclass
class Checkpoints:
    """A job's checkpoints in storage, newest named by `latest.json`; at most `keep` are kept.

    They stay after the job ends (a canceled job keeps its last one), within that limit.
    """

    storage: Storage
    job_id: uuid.UUID
    keep: int
    kept: list[int] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return f"checkpoints/{self.job_id}"

    def save(self, accelerator: Any, step: int) -> dict[str, Any]:
        """Write a checkpoint of `step`; return the job's output record of its latest checkpoint."""
        with tempfile.TemporaryDirectory(prefix="diffq-checkpoint-") as tmp:
            accelerator.save_state(tmp)
            step_prefix = f"{self.prefix}/step-{step:08d}"
            keys = put_folder(self.storage, Path(tmp), step_prefix)
        self.kept = [s for s in self.kept if s != step] + [step]
        pointer = {"step": step, "prefix": step_prefix, "keys": keys, "kept": self.kept}
        self.storage.put(f"{self.prefix}/{LATEST}", json.dumps(pointer).encode(), "application/json")
        while len(self.kept) > self.keep:
            self._delete(self.kept.pop(0))
        return {
            "kind": "checkpoint",
            "key": f"{self.prefix}/{LATEST}",
            "content_type": "application/json",
            "step": step,
        }

    def resume(self, accelerator: Any) -> int:
        """Load the latest checkpoint into `accelerator`; return its step, or 0 if there is none."""
        try:
            pointer = json.loads(self.storage.get(f"{self.prefix}/{LATEST}"))
        except KeyError:
            return 0
        with tempfile.TemporaryDirectory(prefix="diffq-checkpoint-") as tmp:
            get_folder(self.storage, pointer["prefix"], Path(tmp), keys=pointer["keys"])
            accelerator.load_state(tmp)
        self.kept = list(pointer.get("kept", [pointer["step"]]))
        logger.info("job %s resumes from its checkpoint of step %s", self.job_id, pointer["step"])
        return int(pointer["step"])

    def _delete(self, step: int) -> None:
        for key in self.storage.list(f"{self.prefix}/step-{step:08d}"):
            self.storage.delete(key)


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of the squarest grid holding exactly `count` images."""
    rows = max(r for r in range(1, math.isqrt(count) + 1) if count % r == 0)
    return rows, count // rows


def save_grid(
    storage: Storage, job_id: uuid.UUID, images: list[Image.Image], epoch: int, step: int, parameters: dict
) -> dict[str, Any]:
    """Store a sample grid (`make_image_grid`) of `images`; return its output record."""
    from diffusers.utils import make_image_grid

    rows, cols = grid_shape(len(images))
    grid = make_image_grid(images, rows=rows, cols=cols)
    key = f"jobs/{job_id}/samples/epoch-{epoch:04d}.png"
    storage.put(key, encode_png(grid, parameters | {"epoch": epoch, "step": step}), "image/png")
    return {
        "kind": "sample_grid",
        "key": key,
        "content_type": "image/png",
        "width": grid.width,
        "height": grid.height,
        "epoch": epoch,
        "step": step,
    }


def store_model(
    storage: Storage, job_id: uuid.UUID, name: str, folder: Path, index_file: str
) -> tuple[str, dict[str, Any]]:
    """Upload a saved model folder under its registry prefix; return the prefix and its output record."""
    prefix = model_prefix(name, job_id)
    put_folder(storage, folder, prefix)
    return prefix, {
        "kind": "model",
        "name": name,
        "key": f"{prefix}/{index_file}",
        "content_type": "application/octet-stream"
        if index_file.endswith(".safetensors")
        else "application/json",
    }


@dataclass
class Batch:
    """One batch of a training run: which images, and those images as floats in [-1, 1] on the device."""

    indices: torch.Tensor
    pixel_values: torch.Tensor


class TrainingLoop:
    """The part every training job shares, used in three calls, as diffusers' training scripts run:

    - `prepare(model, parameters)`: AdamW on the trained `parameters`, the learning rate schedule,
      both handed to the `Accelerator` with the model;
    - `run(...)`: resume from the job's latest checkpoint, then draw the batches epoch after epoch;
      each goes through the runner's `compute_loss(batch) -> loss`, with gradient accumulation, clipping
      at 1.0, a logged optimizer step and a checkpoint every `checkpointing_steps`; `after_step()` runs
      after each optimizer step, `at_epoch_end(epoch, step, last)` after each epoch, the last included
      (which may end mid-epoch, with `max_train_steps`);
    - `store(folder, ...)`: upload the saved model and register it under the job's `output_model`.

    Whatever a runner registers for checkpointing (an EMA, save hooks) it registers between `prepare`
    and `run`; the loop's own `TrainingState` (the step and the noise generator) is registered last.
    """

    def __init__(self, job: JobRun, params: TrainingParams, accelerator: Any, num_images: int) -> None:
        assert params.seed is not None  # the API sets it
        self.job, self.params, self.accelerator = job, params, accelerator
        self.plan = TrainingPlan(
            num_images=num_images,
            train_batch_size=params.train_batch_size,
            gradient_accumulation_steps=params.gradient_accumulation_steps,
            num_epochs=params.num_epochs,
            max_train_steps=params.max_train_steps,
        )
        self.state = TrainingState(torch.Generator(device=accelerator.device).manual_seed(params.seed))
        self.step = self.epoch = 0

    @property
    def generator(self) -> torch.Generator:
        """The generator of the run's noise (and anything else random in a loss), checkpointed."""
        return self.state.generator

    def prepare(self, model: torch.nn.Module, parameters: Iterable[torch.nn.Parameter]) -> Any:
        """The optimizer and learning rate schedule of `parameters`; return `model` as accelerate wraps it."""
        from diffusers.optimization import get_scheduler

        self.parameters = list(parameters)
        optimizer = torch.optim.AdamW(self.parameters, lr=self.params.learning_rate)
        lr_scheduler = get_scheduler(
            self.params.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=self.params.lr_warmup_steps,
            num_training_steps=self.plan.total_steps,
        )
        model, self.optimizer, self.lr_scheduler = self.accelerator.prepare(model, optimizer, lr_scheduler)
        self.model = model
        return model

    def run(
        self,
        dataset: TrainingImages,
        compute_loss: Callable[[Batch], torch.Tensor],
        after_step: Callable[[], None] | None = None,
        at_epoch_end: Callable[[int, int, bool], None] | None = None,
    ) -> TrainingReporter:
        """Train until `plan.total_steps`, from the latest checkpoint if an earlier attempt left one."""
        job, params, accelerator, plan, model = self.job, self.params, self.accelerator, self.plan, self.model
        assert params.seed is not None
        accelerator.register_for_checkpointing(self.state)
        checkpoints = Checkpoints(job.storage, job.job_id, keep=params.checkpoints_total_limit)
        step = self.step = checkpoints.resume(accelerator)  # 0 on a first attempt
        first_epoch, first_batch = plan.position(step)
        self.reporter = reporter = job.start_training_progress(total=plan.total_steps, start_step=step)
        # An earlier attempt may have logged steps past the checkpoint it left.
        forgot = forget_metrics_after(job.session, job.job_id, job.attempt, step)
        job.session.commit()
        if not forgot:
            raise JobCanceled(str(job.job_id))

        model.train()
        loss_sum = 0.0  # over the batches of one optimizer step
        for epoch in range(first_epoch, plan.epochs):
            self.epoch = epoch
            order, flips = epoch_order(params.seed, epoch, len(dataset))
            for batch in range(first_batch if epoch == first_epoch else 0, plan.batches_per_epoch):
                indices = order[batch * params.train_batch_size : (batch + 1) * params.train_batch_size]
                pixel_values = dataset.batch(indices, flips[indices] & params.random_flip, accelerator.device)

                with accelerator.accumulate(model):
                    loss = compute_loss(Batch(indices, pixel_values))
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(self.parameters, 1.0)
                    step_lr = self.lr_scheduler.get_last_lr()[0]  # the rate this step uses
                    self.optimizer.step()
                    self.lr_scheduler.step()
                    self.optimizer.zero_grad()
                loss_sum += loss.detach().item()

                if accelerator.sync_gradients:
                    if after_step is not None:
                        after_step()
                    step = self.step = self.state.step = step + 1
                    mean_loss = loss_sum / params.gradient_accumulation_steps
                    loss_sum = 0.0
                    reporter.log_step(step, epoch=epoch, loss=mean_loss, lr=step_lr)
                    if step % params.checkpointing_steps == 0 and step < plan.total_steps:
                        reporter.flush()  # the metrics up to here are stored before the checkpoint names them
                        reporter.add_output(checkpoints.save(accelerator, step))
                    if step == plan.total_steps:
                        break

            last_epoch = step == plan.total_steps
            if at_epoch_end is not None:
                at_epoch_end(epoch, step, last_epoch)
            if reporter.outputs_changed:
                reporter.flush()  # list the epoch's new outputs (a sample grid, a snapshot) on the job now
            if last_epoch:
                break
        return reporter

    def store(
        self, folder: Path, index_file: str, kind: ModelKind, base_model: str | None = None
    ) -> list[dict[str, Any]]:
        """Upload the saved model in `folder`, register it as the job's `output_model`; return the job's
        outputs. A job that lost its claim on the name (canceled, taken over) ends `JobCanceled`."""
        job = self.job
        assert job.output_model is not None  # the API sets it
        prefix, model_output = store_model(job.storage, job.job_id, job.output_model, folder, index_file)
        registered = register_model(
            job.session,
            job_id=job.job_id,
            attempt=job.attempt,
            name=job.output_model,
            kind=kind,
            storage_prefix=prefix,
            base_model=base_model,
            overwrite=job.overwrite_output_model,
        )
        job.session.commit()
        if not registered:
            raise JobCanceled(str(job.job_id))
        return self.reporter.outputs + [model_output]
