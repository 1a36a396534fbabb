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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.errors import BadInput
from core.images import encode_png
from core.model_registry import model_prefix
from core.storage import Storage, get_folder, put_folder
from models_store.load import pick_device

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
