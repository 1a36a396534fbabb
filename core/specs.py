"""Job specs: what a user may submit, validated before a job is written.

Each job type has a params model; `JobSpec` is the union of all job specs, told apart by `type`.
"""

import secrets
from typing import Annotated, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from core.config import get_settings
from core.schedulers import scheduler_problem
from core.storage import _clean_key

MAX_SEED = 2**32 - 1


def new_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def _check_num_images(value: int) -> int:
    limit = get_settings().max_num_images
    if value > limit:
        raise ValueError(f"num_images must be at most {limit}, got {value}")
    return value


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

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


def _check_size_limit(width: int | None, height: int | None) -> None:
    limit = get_settings().max_pixels
    if width and height and width * height > limit:
        raise ValueError(f"width*height is {width * height} pixels; the limit is {limit}")


class ImageRef(BaseModel):
    """An input image: `{"upload": "<id>"}` from `POST /v1/uploads`, or `{"key": "<storage key>"}` for
    an object already in storage (e.g. another job's output, `jobs/<id>/0.png`)."""

    model_config = ConfigDict(extra="forbid")
    upload: str | None = Field(default=None, pattern=UPLOAD_ID, description="An id from POST /v1/uploads.")
    key: str | None = Field(default=None, min_length=1, max_length=1024, description="A storage key.")

    @model_validator(mode="after")
    def _exactly_one(self) -> "ImageRef":
        if (self.upload is None) == (self.key is None):
            raise ValueError('give exactly one of {"upload": "<upload id>"} or {"key": "<storage key>"}')
        if self.key is not None:
            try:
                self.key = _clean_key(self.key)
            except ValueError:
                raise ValueError(
                    f"key {self.key!r} is not a storage key; give a relative key without '.' or '..' "
                    "parts, such as jobs/<job id>/0.png"
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


class PromptParams(Params):
    """What every Stable-Diffusion-family mode takes: a prompt, steps, guidance, seeds, a scheduler."""

    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str = Field(default="", max_length=4000)
    num_inference_steps: int = Field(default=30, ge=1, le=1000)
    guidance_scale: float = Field(default=7.5, ge=0)
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Image i uses seed + i; picked and recorded if unset."
    )
    num_images: int = Field(default=1, ge=1)
    scheduler: str | None = Field(
        default=None, description="A name from GET /v1/schedulers; the model's own scheduler if unset."
    )

    _num_images_limit = field_validator("num_images")(_check_num_images)
    _scheduler_known = field_validator("scheduler")(_check_scheduler)


class Text2ImgParams(PromptParams):
    width: int | None = Field(default=None, ge=8, description="Multiple of 8; the model's size if unset.")
    height: int | None = Field(default=None, ge=8, description="Multiple of 8; the model's size if unset.")

    _multiple_of_8 = field_validator("width", "height")(_check_multiple_of_8)

    @model_validator(mode="after")
    def _check_pixels(self) -> "Text2ImgParams":
        _check_size_limit(self.width, self.height)
        return self


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

    mask_image: ImageRef
    strength: float = Field(default=1.0, gt=0, le=1, description="1 repaints the masked area from noise.")
    width: int | None = Field(default=None, ge=8, description="Multiple of 8; the image's size if unset.")
    height: int | None = Field(default=None, ge=8, description="Multiple of 8; the image's size if unset.")

    image_fields: ClassVar[tuple[str, ...]] = ("image", "mask_image")
    same_size_as_image: ClassVar[tuple[str, ...]] = ("mask_image",)

    _multiple_of_8 = field_validator("width", "height")(_check_multiple_of_8)

    @model_validator(mode="after")
    def _check_pixels(self) -> "InpaintParams":
        _check_size_limit(self.width, self.height)
        return self

    def output_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return (self.width or image_size[0], self.height or image_size[1])


class Depth2ImgParams(StrengthParams):
    """Depth-guided image-to-image: the depth comes from the model's depth estimator, or from
    `depth_map`, a greyscale image of the input's size (brighter is nearer, as the estimator's)."""

    depth_map: ImageRef | None = None

    image_fields: ClassVar[tuple[str, ...]] = ("image", "depth_map")
    same_size_as_image: ClassVar[tuple[str, ...]] = ("depth_map",)


class UnconditionalParams(Params):
    num_inference_steps: int = Field(default=50, ge=1, le=1000)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_images: int = Field(default=1, ge=1)
    scheduler: str | None = Field(
        default=None, description="A name from GET /v1/schedulers; the model's own scheduler if unset."
    )

    _num_images_limit = field_validator("num_images")(_check_num_images)
    _scheduler_known = field_validator("scheduler")(_check_scheduler)


class Text2ImgJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text2img"]
    model: str = Field(min_length=1, max_length=512)
    params: Text2ImgParams


class Img2ImgJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["img2img"]
    model: str = Field(min_length=1, max_length=512)
    params: Img2ImgParams


class InpaintJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["inpaint"]
    model: str = Field(min_length=1, max_length=512)
    params: InpaintParams


class Depth2ImgJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["depth2img"]
    model: str = Field(min_length=1, max_length=512)
    params: Depth2ImgParams


class UnconditionalJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["unconditional"]
    model: str = Field(min_length=1, max_length=512)
    params: UnconditionalParams = UnconditionalParams()


JobSpec = Annotated[
    Text2ImgJob | Img2ImgJob | InpaintJob | Depth2ImgJob | UnconditionalJob, Field(discriminator="type")
]
JOB_SPEC = TypeAdapter(JobSpec)
PARAMS_BY_TYPE: dict[str, type[Params]] = {
    "text2img": Text2ImgParams,
    "img2img": Img2ImgParams,
    "inpaint": InpaintParams,
    "depth2img": Depth2ImgParams,
    "unconditional": UnconditionalParams,
}
