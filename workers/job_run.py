"""What a runner gets for one job: its spec, a progress reporter and a place for its outputs."""

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from PIL import Image
from sqlalchemy.orm import Session

from core.config import Settings, get_settings
from core.errors import BadInput, NumericalError
from core.events import JobEvents
from core.images import Role, encode_png
from core.job_types import parse_params
from core.jobs import Ended
from core.model_configs import norm_problem
from core.progress import ProgressReporter, TrainingReporter
from core.specs import ImageRef, Params
from core.storage import Storage, get_storage
from core.tables import Job
from core.uploads import load_input_image
from workers.previews import NoCheapPreview, preview_image

# Seconds this process has spent inside pipeline calls (`pipeline_call`): the task reports the rest of its
# time per job, the worker's own overhead (workers/tasks.py).
_IN_PIPELINE_CALLS = [0.0]


@contextmanager
def pipeline_call() -> Iterator[None]:
    """Around a runner's diffusers pipeline call: its time counts as the call's, not the worker's."""
    start = time.perf_counter()
    try:
        yield
    finally:
        _IN_PIPELINE_CALLS[0] += time.perf_counter() - start


def seconds_in_pipeline_calls() -> float:
    return _IN_PIPELINE_CALLS[0]


def check_fits(pipe: Any, width: int, height: int, batch_size: int) -> None:
    """Fail the job with `bad_input` if `pipe`'s UNet can't denoise `width`×`height` px images in a batch of
    `batch_size` latents (core/model_configs.py `norm_problem`, the rule the API applies to a local model's
    configs before it queues a text-to-image job), instead of an `internal` error from torch mid-call."""
    if problem := norm_problem(pipe.unet.config, pipe.vae_scale_factor, width, height, batch_size):
        raise BadInput(f"this model can't make the image: {problem}")


def check_finite(values: torch.Tensor | np.ndarray, what: str) -> None:
    """Fail the job with `numerical_error` if `values` hold a NaN or an infinity.

    One reduction and one read of its result: on a GPU, a sync per step but no copy.
    """
    if isinstance(values, np.ndarray):
        finite = bool(np.isfinite(values).all())
    else:
        finite = not bool((values.isnan().any() | values.isinf().any()).item())
    if not finite:
        raise NumericalError(
            f"{what} hold NaN or infinite values; the run diverged (too many steps for this scheduler, "
            "or a half-precision overflow): try another scheduler, fewer steps or full precision"
        )


@dataclass
class JobRun:
    job_id: uuid.UUID
    attempt: int
    type: str
    model: str | None
    # The params as stored on the job; runners read them typed, as `params`.
    stored_params: dict[str, Any]
    settings: Settings = field(default_factory=get_settings)
    storage: Storage = field(default_factory=get_storage)
    reporter: ProgressReporter | None = None
    # Training jobs: the model name to register, and what an earlier attempt already listed.
    output_model: str | None = None
    overwrite_output_model: bool = False
    outputs: list[dict[str, Any]] = field(default_factory=list)
    # The job's session (workers/tasks.py): what a runner writes goes through it, each write committed.
    session: Session | None = None
    # The job's event stream (core/events.py): every step, previews, outputs; and the cancel flag.
    events: JobEvents | None = None
    no_preview: bool = False  # this model has no cheap preview, and the stream says so
    # Set by the task of a worker (workers/finisher.py): `save_images` keeps the images in `pending`, and
    # `store_pending` encodes and uploads them later, off the denoising path.
    defer_outputs: bool = False
    pending: list[tuple[Image.Image, dict[str, Any]]] | None = None
    # Called at the job's last denoising step (`ProgressReporter.on_last_step`): the task's next claim.
    on_last_step: Callable[[], None] | None = None
    # The job's final state as its end was written (workers/tasks.py), for its event stream's last event.
    ended: Ended | None = None

    @classmethod
    def from_job(cls, job: Job, session: Session | None = None) -> "JobRun":
        return cls(
            job_id=job.id,
            attempt=job.attempts,
            type=job.type,
            model=job.model,
            stored_params=dict(job.params),
            output_model=job.output_model,
            overwrite_output_model=bool(job.overwrite_output_model),
            outputs=list(job.outputs or []),
            session=session,
        )

    @cached_property
    def params(self) -> Params:
        """The job's params as its type's params model (core/job_types.py), parsed once.

        Only the schema applies: the API checked this deployment's limits (`DIFFQ_MAX_*`) when it admitted
        the job, so a worker configured with other limits still runs it. Params that no longer fit the
        schema (stored before it changed) fail the job as `bad_input`.
        """
        try:
            return parse_params(self.type, self.stored_params)
        except ValueError as error:  # pydantic's ValidationError, or a type no entry names
            raise BadInput(f"the job's params do not fit a '{self.type}' job: {error}") from error

    def start_progress(self, total: int) -> ProgressReporter:
        self.reporter = ProgressReporter(
            self.job_id,
            self.attempt,
            total,
            self.settings.progress_min_interval_s,
            check_interval_s=self.settings.cancel_check_interval_s,
            session=self.session,
            events=self.events,
            # Every step goes to the event stream, and the job's end writes its last progress.
            eager=self.events is None,
        )
        self.reporter.on_last_step = self.on_last_step
        self.reporter.start()
        return self.reporter

    def start_diffusers_progress(
        self, pipe: Any, num_inference_steps: int, strength: float | None = None
    ) -> ProgressReporter:
        """Start progress with the number of timesteps `pipe` will really run, known before it runs.

        Schedulers may run more steps than asked (PNDM one more, Heun two per step but the last) and
        `strength` skips the first ones; the pipeline's own scheduler and `get_timesteps` say how many.
        The job's scheduler is its own, and the call sets its timesteps again, on the pipeline's device: here
        they are counted on the CPU (`pipe.device` walks every module, a millisecond a job).
        """
        pipe.scheduler.set_timesteps(num_inference_steps, device="cpu")
        timesteps = pipe.scheduler.timesteps
        if strength is not None:
            timesteps, _ = pipe.get_timesteps(num_inference_steps, strength, "cpu")
        return self.start_progress(total=len(timesteps))

    def load_image(self, ref: ImageRef, role: Role = "image") -> Image.Image:
        """An input image of the job read as `role` (RGB image, L mask, L or F depth map; see
        core/images.py); `bad_input` if it is gone or bad."""
        return load_input_image(self.storage, ref, role)

    def start_training_progress(self, total: int, start_step: int) -> TrainingReporter:
        """Progress per optimizer step, from `start_step` when resuming; keeps the earlier outputs."""
        reporter = TrainingReporter(
            self.job_id,
            self.attempt,
            total,
            self.settings.progress_min_interval_s,
            start_step=start_step,
            outputs=self.outputs,
            check_interval_s=self.settings.cancel_check_interval_s,
            session=self.session,
            events=self.events,
        )
        self.reporter = reporter
        reporter.flush()
        return reporter

    def diffusers_callback(self, reporter: ProgressReporter):
        """A `callback_on_step_end` that records each finished timestep."""

        def on_step_end(pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
            # Schedulers may run more or fewer steps than asked (PNDM adds one; img2img skips
            # some): the pipeline knows how many it really runs.
            reporter.total = getattr(pipe, "num_timesteps", None) or reporter.total
            check_finite(callback_kwargs["latents"], f"the latents at step {step_index + 1}")
            reporter.update(step_index + 1)
            self.maybe_preview(step_index + 1, callback_kwargs["latents"], pipe)
            return callback_kwargs

        return on_step_end

    def maybe_preview(self, step: int, latents: torch.Tensor, pipe: Any) -> None:
        """Publish a preview of `latents` (or a pixel-space sample) if this step is due for one: every
        `params.preview_every` steps (default `DIFFQ_PREVIEW_EVERY`; 0 is off). See workers/previews.py."""
        every = getattr(self.params, "preview_every", None)
        every = self.settings.preview_every if every is None else every
        if not every or step % every or self.events is None or self.no_preview:
            return
        mode = getattr(self.params, "preview", "latent")
        try:
            image = preview_image(latents, pipe, mode, self.settings.preview_size)
        except NoCheapPreview as error:
            self.no_preview = True
            self.events.preview_unavailable(step, str(error))
            return
        self.events.preview(step, image, "image/jpeg")

    def decoded_images(self, array: np.ndarray) -> list[Image.Image]:
        """A pipeline's `output_type="np"` images (floats in [0, 1]) as PIL images, as its "pil" output
        would be, once checked finite: NaN would otherwise come out black."""
        check_finite(array, "the decoded image")
        return [Image.fromarray(image) for image in (array * 255).round().astype("uint8")]

    def output_key(self, name: str) -> str:
        return f"jobs/{self.job_id}/{name}"

    def save_images(
        self, images: list[Image.Image], parameters: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """Store each image as a PNG carrying its parameters; return the job's output records.

        A job canceled since its last step (during the VAE decode, say) stores nothing. With
        `defer_outputs`, nothing is checked or stored yet: the images wait in `pending` for
        `store_pending`, and the records are those it will store.
        """
        pairs = list(zip(images, parameters, strict=True))
        self.pending = pairs
        if not self.defer_outputs:
            self.store_pending()
        return [
            {
                "key": self.output_key(f"{index}.png"),
                "content_type": "image/png",
                "width": image.width,
                "height": image.height,
                "seed": image_parameters.get("params", {}).get("seed"),
            }
            for index, (image, image_parameters) in enumerate(pairs)
        ]

    def store_pending(self) -> None:
        """Encode and upload the images `save_images` kept, unless the job was canceled since its last
        step (JobCanceled); what the upload raises fails the job. Forgets them once stored."""
        if self.reporter is not None:
            self.reporter.check()
        for index, (image, image_parameters) in enumerate(self.pending or []):
            self.storage.put(
                self.output_key(f"{index}.png"), encode_png(image, image_parameters), "image/png"
            )
        self.pending = None
