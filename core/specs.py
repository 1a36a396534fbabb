"""Job specs: what a user may submit, validated before a job is written.

Each job type has a params model; `JobSpec` is the union of all job specs, told apart by `type`.
"""

import secrets
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.config import get_settings

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


class Text2ImgParams(Params):
    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str = Field(default="", max_length=4000)
    num_inference_steps: int = Field(default=30, ge=1, le=1000)
    guidance_scale: float = Field(default=7.5, ge=0)
    width: int | None = Field(default=None, ge=8, description="Multiple of 8; the model's size if unset.")
    height: int | None = Field(default=None, ge=8, description="Multiple of 8; the model's size if unset.")
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED, description="Image i uses seed + i; picked and recorded if unset."
    )
    num_images: int = Field(default=1, ge=1)

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value % 8:
            raise ValueError(f"{info.field_name} must be a multiple of 8, got {value}")
        return value

    _num_images_limit = field_validator("num_images")(_check_num_images)

    @model_validator(mode="after")
    def _check_pixels(self) -> "Text2ImgParams":
        limit = get_settings().max_pixels
        if self.width and self.height and self.width * self.height > limit:
            raise ValueError(f"width*height is {self.width * self.height} pixels; the limit is {limit}")
        return self


class UnconditionalParams(Params):
    num_inference_steps: int = Field(default=50, ge=1, le=1000)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_images: int = Field(default=1, ge=1)

    _num_images_limit = field_validator("num_images")(_check_num_images)


class Text2ImgJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text2img"]
    model: str = Field(min_length=1, max_length=512)
    params: Text2ImgParams


class UnconditionalJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["unconditional"]
    model: str = Field(min_length=1, max_length=512)
    params: UnconditionalParams = UnconditionalParams()


JobSpec = Annotated[Text2ImgJob | UnconditionalJob, Field(discriminator="type")]
JOB_SPEC = TypeAdapter(JobSpec)
PARAMS_BY_TYPE: dict[str, type[Params]] = {
    "text2img": Text2ImgParams,
    "unconditional": UnconditionalParams,
}
