"""Job specs: what a user may submit, validated before a job is written.

Each job type has a params model; `JobSpec` is the union of all job specs, told apart by `type`, and
lists the specs of core/job_types.py's registry (checked there at import).

The models hold only what does not depend on settings: a worker parses a stored job's params with them
whatever its own settings are. The limits a deployment sets (`DIFFQ_MAX_NUM_IMAGES`, `DIFFQ_MAX_PIXELS`)
are checked when a job is admitted (core/submit.py's `limit_problems`).
"""

import json
import re
import secrets
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    Strict,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from core.dataset_refs import parse_dataset
from core.paths import BadKey
from core.schedulers import scheduler_problem
from core.storage import _clean_key
from core.webhook_urls import url_form_problem

MAX_SEED = 2**32 - 1
# Classifier-free guidance scales people use lie within 1-30; far beyond, the images turn to noise and
# then the numbers overflow (a job that fails `numerical_error` after its steps ran).
MAX_GUIDANCE_SCALE = 100
# A registered model's name: a single path segment, so it can never be read as a Hub id or a path.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def field_value(model: BaseModel, name: str) -> Any:
    """`model`'s field `name`, or None if its class has no such field (a spec or params of another job
    type). The same as `getattr(model, name, None)` without pydantic's `__getattr__` for a missing name,
    which raises inside and costs ~5 µs: admitting a 10,000-job batch asked it 60,000 times."""
    return model.__dict__.get(name)


def new_seed(num_images: int = 1) -> int:
    """A random first seed whose `num_images` seeds (seed + i) all fit in 32 bits."""
    return secrets.randbelow(MAX_SEED + 2 - num_images)


def _check_seed_range(seed: int | None, num_images: int) -> None:
    # Torch's CPU generator takes 64-bit seeds but diffq records 32-bit ones: a last seed over the range
    # would be recorded with params that are refused when resubmitted.
    if seed is not None and seed + num_images - 1 > MAX_SEED:
        raise ValueError(
            f"seed + num_images - 1 = {seed + num_images - 1} is over the largest seed, {MAX_SEED} (image i "
            f"uses seed + i); use a seed of at most {MAX_SEED - num_images + 1}"
        )


class Params(BaseModel):
    # No NaN or infinity in any number: JSON has neither, and a huge literal such as 1e999 parses as inf
    # (it made guidance_scale inf and every latent NaN at the first step).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Fields holding an `ImageRef`, and those of them that must have the same size as `image`.
    image_fields: ClassVar[tuple[str, ...]] = ()
    same_size_as_image: ClassVar[tuple[str, ...]] = ()

    def output_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The size of the images a job makes from an input `image` of `image_size` (width, height)."""
        return image_size


UPLOAD_ID = r"^[0-9a-f]{32}$"


def _check_scheduler(value: str | None) -> str | None:
    problem = scheduler_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _check_multiple_of_8(value: int | None, info: ValidationInfo) -> int | None:
    if value is not None and value % 8:
        raise ValueError(f"{info.field_name} must be a multiple of 8, got {value}")
    return value


class ImageRef(BaseModel):
    """An input image: `{"upload": "<id>"}` from `POST /v1/uploads`, or `{"key": "<storage key>"}` for
    an object already in storage (e.g. another job's output, `jobs/<id>/0.png`)."""

    model_config = ConfigDict(extra="forbid")
    upload: str | None = Field(default=None, pattern=UPLOAD_ID, description="An id from POST /v1/uploads.")

    @model_validator(mode="before")
    @classmethod
    def _not_a_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError(
                f'an image is an object: {{"upload": "<id from POST /v1/uploads>"}} or {{"key": "<storage '
                f'key>"}}, not the string {json.dumps(value[:100])}'
            )
        return value

    key: str | None = Field(default=None, min_length=1, max_length=1024, description="A storage key.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "ImageRef":
        if (self.upload is None) == (self.key is None):
            raise ValueError('give exactly one of {"upload": "<upload id>"} or {"key": "<storage key>"}')
        if self.key is not None:
            try:
                self.key = _clean_key(self.key)
            except BadKey as error:
                shown = repr(self.key) if len(self.key) <= 100 else f"{self.key[:60]!r}..."
                raise ValueError(
                    f"key {shown} is not a storage key: {error.reason} (such as jobs/<job id>/0.png)"
                ) from None
        return self

    @model_serializer(mode="wrap")
    def _without_nones(self, handler: SerializerFunctionWrapHandler) -> dict[str, str]:
        return {name: value for name, value in handler(self).items() if value is not None}

    @property
    def storage_key(self) -> str:
        return upload_key(self.upload) if self.upload is not None else str(self.key)


def upload_key(upload_id: str) -> str:
    return f"uploads/{upload_id}"


class LoraRef(BaseModel):
    """A registered LoRA to apply to a generation, `scale` times its trained strength."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    scale: float = Field(default=1.0, ge=-10, le=10)


class PreviewParams(Params):
    """Previews while denoising (workers/previews.py), published on the job's event stream."""

    preview_every: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="A preview every this many steps (0: none); DIFFQ_PREVIEW_EVERY if unset (off).",
    )
    preview: Literal["latent", "vae"] = Field(
        default="latent",
        description='"latent": the latents mapped to RGB, a few KB and well under 2 % of a step (SD 1.x/2.x, '
        'SDXL and pixel-space models); "vae": a full VAE decode per preview, costly (several steps\' time).',
    )


class PromptParams(PreviewParams):
    """What every Stable-Diffusion-family mode takes: a prompt, steps, guidance, seeds, a scheduler."""

    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str = Field(default="", max_length=4000)
    num_inference_steps: int = Field(default=30, ge=1, le=1000)
    guidance_scale: float = Field(
        default=7.5,
        ge=0,
        le=MAX_GUIDANCE_SCALE,
        description="How closely to follow the prompt; 0..100 (usual: 5-12; 1 or less: no guidance).",
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Image i uses seed + i; picked and recorded if unset."
    )
    num_images: int = Field(default=1, ge=1, description="At most DIFFQ_MAX_NUM_IMAGES.")
    scheduler: str | None = Field(
        default=None, description="A name from GET /v1/schedulers; the model's own scheduler if unset."
    )

    _scheduler_known = field_validator("scheduler")(_check_scheduler)

    @model_validator(mode="after")
    def _seeds_fit(self) -> "PromptParams":
        _check_seed_range(self.seed, self.num_images)
        return self


class Text2ImgParams(PromptParams):
    lora: LoraRef | None = Field(default=None, description="A registered LoRA to apply, with its scale.")
    width: int | None = Field(default=None, ge=16, description="Multiple of 8; the model's size if unset.")
    height: int | None = Field(default=None, ge=16, description="Multiple of 8; the model's size if unset.")

    _multiple_of_8 = field_validator("width", "height")(_check_multiple_of_8)


class StrengthParams(PromptParams):
    """Modes that noise an input image partway (`strength`) and denoise it back."""

    image: ImageRef
    strength: float = Field(
        default=0.8, gt=0, le=1, description="How much of the image to repaint: 1 ignores it entirely."
    )

    image_fields: ClassVar[tuple[str, ...]] = ("image",)

    @model_validator(mode="after")
    def _runs_a_step(self) -> "StrengthParams":
        # diffusers runs int(num_inference_steps * strength) steps.
        if int(self.num_inference_steps * self.strength) < 1:
            raise ValueError(
                f"num_inference_steps × strength = {self.num_inference_steps} × {self.strength} runs no "
                "denoising step; raise num_inference_steps or strength"
            )
        return self


class Img2ImgParams(StrengthParams):
    """Image-to-image: the output has the input image's size (rounded down to a multiple of 8)."""


class InpaintParams(StrengthParams):
    """Inpainting: `mask_image` is white where the image is repainted and black where it is kept."""

    mask_image: ImageRef = Field(
        description="White where the image is repainted, black where it is kept. A mask with transparency "
        "is read from its alpha alone: transparent is repainted, opaque kept."
    )
    strength: float = Field(default=1.0, gt=0, le=1, description="1 repaints the masked area from noise.")
    width: int | None = Field(default=None, ge=16, description="Multiple of 8; the image's size if unset.")
    height: int | None = Field(default=None, ge=16, description="Multiple of 8; the image's size if unset.")

    image_fields: ClassVar[tuple[str, ...]] = ("image", "mask_image")
    same_size_as_image: ClassVar[tuple[str, ...]] = ("mask_image",)

    _multiple_of_8 = field_validator("width", "height")(_check_multiple_of_8)

    def output_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return (self.width or image_size[0], self.height or image_size[1])


class Depth2ImgParams(StrengthParams):
    """Depth-guided image-to-image: the depth comes from the model's depth estimator, or from
    `depth_map`, a greyscale image of the input's size (brighter is nearer, as the estimator's)."""

    depth_map: ImageRef | None = None

    image_fields: ClassVar[tuple[str, ...]] = ("image", "depth_map")
    same_size_as_image: ClassVar[tuple[str, ...]] = ("depth_map",)


class UnconditionalParams(PreviewParams):
    num_inference_steps: int = Field(default=50, ge=1, le=1000)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_images: int = Field(default=1, ge=1, description="At most DIFFQ_MAX_NUM_IMAGES.")
    scheduler: str | None = Field(
        default=None, description="A name from GET /v1/schedulers; the model's own scheduler if unset."
    )

    _scheduler_known = field_validator("scheduler")(_check_scheduler)

    @model_validator(mode="after")
    def _seeds_fit(self) -> "UnconditionalParams":
        _check_seed_range(self.seed, self.num_images)
        return self


def _check_dataset(value: str) -> str:
    parse_dataset(value)  # its ValueError says what a dataset may be
    return value


UNET_DOWN_BLOCKS = ("DownBlock2D", "AttnDownBlock2D")
UNET_UP_BLOCKS = ("UpBlock2D", "AttnUpBlock2D")
LR_SCHEDULERS = Literal["cosine", "linear", "constant", "constant_with_warmup"]
MIXED_PRECISION = Literal["no", "fp16", "bf16"]


class TrainingParams(Params):
    """What every training job takes: the data, the length, the optimizer, checkpoints."""

    dataset: str = Field(
        min_length=1,
        max_length=1024,
        description="'builtin:glyphs', an upload id of a zip (POST /v1/uploads), or a storage prefix.",
    )
    train_batch_size: int = Field(default=16, ge=1, le=1024)
    num_epochs: int = Field(default=50, ge=1, le=100_000)
    max_train_steps: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Optimizer steps; overrides num_epochs if set."
    )
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024)
    learning_rate: float = Field(default=1e-4, gt=0, le=1)
    lr_scheduler: LR_SCHEDULERS = "cosine"
    lr_warmup_steps: int = Field(default=500, ge=0, le=10_000_000)
    mixed_precision: MIXED_PRECISION = Field(
        default="no", description="'fp16' needs a CUDA GPU; 'bf16' works on CPUs and recent GPUs."
    )
    random_flip: bool = Field(default=True, description="Flip half the images left-right, each epoch.")
    checkpointing_steps: int = Field(
        default=500, ge=1, le=10_000_000, description="Checkpoint every this many steps."
    )
    checkpoints_total_limit: int = Field(default=2, ge=1, le=100, description="Checkpoints kept in storage.")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="Picked and recorded if unset.")

    _dataset_ref = field_validator("dataset")(_check_dataset)


class TrainUnconditionalParams(TrainingParams):
    """The diffusers training tutorial's `TrainingConfig`, and the shape of the UNet2DModel it trains."""

    image_size: int = Field(default=128, ge=8, le=1024)
    eval_batch_size: int = Field(default=16, ge=1, le=64, description="Images in each sample grid.")
    save_image_epochs: int = Field(default=10, ge=1, le=100_000)
    save_model_epochs: int = Field(
        default=30, ge=1, le=100_000, description="Store the pipeline every this many epochs."
    )
    sample_inference_steps: int = Field(
        default=1000, ge=1, le=1000, description="DDPM steps of a sample grid."
    )
    num_train_timesteps: int = Field(default=1000, ge=1, le=10_000)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    use_ema: bool = False
    ema_max_decay: float = Field(default=0.9999, gt=0, lt=1)
    ema_inv_gamma: float = Field(default=1.0, gt=0, le=1e6)
    ema_power: float = Field(default=3 / 4, gt=0, le=10)
    block_out_channels: list[int] = Field(default=[128, 128, 256, 256, 512, 512], min_length=1, max_length=8)
    layers_per_block: int = Field(default=2, ge=1, le=8)
    down_block_types: list[str] = Field(
        default=["DownBlock2D", "DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"]
    )
    up_block_types: list[str] = Field(
        default=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"]
    )
    norm_num_groups: int = Field(default=32, ge=1, le=1024)

    @field_validator("block_out_channels")
    @classmethod
    def _positive_channels(cls, value: list[int]) -> list[int]:
        if any(channels < 1 or channels > 4096 for channels in value):
            raise ValueError(f"block_out_channels must be between 1 and 4096, got {value}")
        return value

    @field_validator("down_block_types")
    @classmethod
    def _known_down_blocks(cls, value: list[str]) -> list[str]:
        if unknown := [block for block in value if block not in UNET_DOWN_BLOCKS]:
            raise ValueError(f"unknown down blocks {unknown}; use {' or '.join(UNET_DOWN_BLOCKS)}")
        return value

    @field_validator("up_block_types")
    @classmethod
    def _known_up_blocks(cls, value: list[str]) -> list[str]:
        if unknown := [block for block in value if block not in UNET_UP_BLOCKS]:
            raise ValueError(f"unknown up blocks {unknown}; use {' or '.join(UNET_UP_BLOCKS)}")
        return value

    @model_validator(mode="after")
    def _consistent_unet(self) -> "TrainUnconditionalParams":
        levels = len(self.block_out_channels)
        if len(self.down_block_types) != levels or len(self.up_block_types) != levels:
            raise ValueError(
                f"block_out_channels has {levels} levels, so down_block_types and up_block_types need "
                f"{levels} entries each; got {len(self.down_block_types)} and {len(self.up_block_types)}"
            )
        if bad := [c for c in self.block_out_channels if c % self.norm_num_groups]:
            raise ValueError(
                f"block_out_channels {bad} are not multiples of norm_num_groups ({self.norm_num_groups})"
            )
        factor = 2 ** (levels - 1)
        if self.image_size % factor:
            raise ValueError(
                f"image_size must be a multiple of {factor} for a UNet of {levels} levels, "
                f"got {self.image_size}"
            )
        return self


class TrainLoraParams(TrainingParams):
    """LoRA fine-tuning of a Stable-Diffusion-family UNet, as diffusers' `train_text_to_image_lora.py`."""

    rank: int = Field(default=4, ge=1, le=256)
    resolution: int = Field(default=512, ge=8, le=2048)
    caption_column: str = Field(default="text", min_length=1, max_length=100)
    random_flip: bool = False
    num_epochs: int = Field(default=100, ge=1, le=100_000)
    lr_scheduler: LR_SCHEDULERS = "constant"
    validation_prompt: str | None = Field(default=None, max_length=4000)
    num_validation_images: int = Field(default=4, ge=1, le=16)
    validation_inference_steps: int = Field(default=30, ge=1, le=1000)

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"resolution must be a multiple of 8, got {value}")
        return value


# What a job's webhook may be sent: the job's status changes. A batch's may also be sent `completed`.
JobEvent = Literal["started", "succeeded", "failed", "canceled"]
BatchEvent = Literal[JobEvent, "completed"]
JOB_EVENTS: tuple[str, ...] = get_args(JobEvent)


def _check_webhook_url(url: str) -> str:
    if problem := url_form_problem(url):
        raise ValueError(problem)
    return url


def _unique_events(events: list[str]) -> list[str]:
    return list(dict.fromkeys(events))


WebhookUrl = Annotated[
    str,
    Field(
        max_length=2048,
        description="Where to POST the events (http or https; loopback, private and link-local addresses "
        "are refused unless the server sets DIFFQ_WEBHOOK_ALLOW_PRIVATE=true).",
    ),
    AfterValidator(_check_webhook_url),
]


def _webhook_object(value: Any) -> Any:
    if isinstance(value, str):
        raise ValueError(f'a webhook is an object: {{"url": {json.dumps(value[:200])}}}, maybe with "events"')
    return value


class JobWebhook(BaseModel):
    """Where to send a job's events, signed per Standard Webhooks with the owner's secret; each body is
    the job as `GET /v1/jobs/{id}` returns it at that moment."""

    model_config = ConfigDict(extra="forbid")
    _not_a_string = model_validator(mode="before")(_webhook_object)
    url: WebhookUrl
    events: list[JobEvent] = Field(default=list(JOB_EVENTS), min_length=1)

    _events_once = field_validator("events")(_unique_events)


class BatchWebhook(BaseModel):
    """Where to send a batch's events: `completed` (once every job has ended; the body is the batch as
    `GET /v1/batches/{id}` returns it) and any job events, sent for each of its jobs that names no webhook
    of its own."""

    model_config = ConfigDict(extra="forbid")
    _not_a_string = model_validator(mode="before")(_webhook_object)
    url: WebhookUrl
    events: list[BatchEvent] = Field(default=["completed"], min_length=1)

    _events_once = field_validator("events")(_unique_events)

    def for_jobs(self) -> dict[str, Any] | None:
        """The webhook the batch's jobs get: its job events, if it has any."""
        events = [event for event in self.events if event in JOB_EVENTS]
        return {"url": self.url, "events": events} if events else None


# The bound a job's or a batch's priority has in the schema; an owner's API keys limit it further
# (settings `max_priority`, a key's `limits["max_priority"]`; core/scheduling.py `priority_problem`).
PRIORITY_LIMIT = 1000
Priority = Annotated[
    int,
    Strict(),  # true is not 1
    Field(
        ge=-PRIORITY_LIMIT,
        le=PRIORITY_LIMIT,
        description="Higher runs first (core/scheduling.py); in a batch, unset takes the batch's.",
    ),
]


class SubmittedJob(BaseModel):
    """What every job spec may carry besides its type, model and params."""

    model_config = ConfigDict(extra="forbid")
    webhook: JobWebhook | None = Field(default=None, description="Where to send this job's events.")
    priority: Priority | None = None


class Text2ImgJob(SubmittedJob):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text2img"]
    model: str = Field(min_length=1, max_length=512)
    params: Text2ImgParams


class Img2ImgJob(SubmittedJob):
    model_config = ConfigDict(extra="forbid")
    type: Literal["img2img"]
    model: str = Field(min_length=1, max_length=512)
    params: Img2ImgParams


class InpaintJob(SubmittedJob):
    model_config = ConfigDict(extra="forbid")
    type: Literal["inpaint"]
    model: str = Field(min_length=1, max_length=512)
    params: InpaintParams


class Depth2ImgJob(SubmittedJob):
    model_config = ConfigDict(extra="forbid")
    type: Literal["depth2img"]
    model: str = Field(min_length=1, max_length=512)
    params: Depth2ImgParams


class UnconditionalJob(SubmittedJob):
    model_config = ConfigDict(extra="forbid")
    type: Literal["unconditional"]
    model: str = Field(min_length=1, max_length=512)
    params: UnconditionalParams = UnconditionalParams()


def _check_model_name(value: str) -> str:
    if not MODEL_NAME.match(value) or ".." in value:
        raise ValueError(
            f"output_model '{value}' must be 1 to 100 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return value


class TrainUnconditionalJob(SubmittedJob):
    model_config = ConfigDict(extra="forbid")
    type: Literal["train_unconditional"]
    output_model: str = Field(description="The name the trained model is registered under.")
    overwrite_output_model: bool = Field(
        default=False, description="Replace a registered model of that name (for recurring schedules)."
    )
    params: TrainUnconditionalParams

    _output_model_name = field_validator("output_model")(_check_model_name)

    @property
    def model(self) -> None:
        """Training from scratch starts from no model."""
        return None


class TrainLoraJob(SubmittedJob):
    model_config = ConfigDict(extra="forbid")
    type: Literal["train_lora"]
    model: str = Field(min_length=1, max_length=512, description="The base model the LoRA adapts.")
    output_model: str = Field(description="The name the LoRA is registered under.")
    overwrite_output_model: bool = False
    params: TrainLoraParams

    _output_model_name = field_validator("output_model")(_check_model_name)


JobSpec = Annotated[
    Text2ImgJob
    | Img2ImgJob
    | InpaintJob
    | Depth2ImgJob
    | UnconditionalJob
    | TrainUnconditionalJob
    | TrainLoraJob,
    Field(discriminator="type"),
]
JOB_SPEC = TypeAdapter(JobSpec)
