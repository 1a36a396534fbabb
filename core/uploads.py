"""Input images: uploads, the checks they pass, and the checks a job's input images pass at submission.

An input image is untrusted. Pillow reads an image's size from its header before decoding anything, so
the pixel limit is checked there: a small file that would decode to a huge bitmap (a decompression
bomb) is refused before it costs memory. Only a few formats are parsed at all.
"""

import io
import uuid
import warnings
from dataclasses import dataclass, replace

from PIL import Image

from core.config import get_settings
from core.errors import BadInput
from core.images import (
    IMAGE_FORMATS,
    BadImage,
    Role,
    bad_image,
    check_pixels,
    decode_image,
    normalize_image,
    round_size,
    size_problem,
)
from core.specs import ImageRef, Params, upload_key
from core.storage import Storage

ALLOWED_FORMATS = IMAGE_FORMATS
FLAT_DEPTH_MAP = (
    "depth_map has the same value at every pixel; a depth map needs at least two depths (near and far), "
    "which the pipeline scales to -1..1: send one with depth in it, or leave depth_map out for the model's "
    "own estimate"
)
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "BMP": "image/bmp"}


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    format: str
    # Every pixel the same: no use as a depth map, whose depths diffusers scales by (max - min).
    flat: bool = False

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]


def inspect_image(data: bytes) -> ImageInfo:
    """Check that `data` is a whole image within the byte and pixel limits; return its size and format.

    The size is the one the image has once its EXIF orientation is applied, as diffusers' `load_image`
    does. Raises `BadImage`.
    """
    image, info = _decode(data, "image")
    # Only here, where the API checks what a job names: a worker's `open_image` has no use for it.
    extrema = image.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    return replace(info, flat=all(low == high for low, high in bands))


def open_image(data: bytes, role: Role = "image") -> Image.Image:
    """Check and read image bytes with `read_image`'s rules for `role` (core/images.py)."""
    return _decode(data, role)[0]


def _decode(data: bytes, role: Role) -> tuple[Image.Image, ImageInfo]:
    settings = get_settings()
    if len(data) > settings.max_upload_bytes:
        raise BadImage(
            f"the file is {len(data)} bytes; the limit is {settings.max_upload_bytes} "
            "(DIFFQ_MAX_UPLOAD_BYTES)",
            too_large=True,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            header = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            check_pixels(*header.size)
            header.verify()
    except BadImage:
        raise
    except Exception as error:
        raise bad_image(error, data) from error
    # `verify` leaves the image unusable and does not decode every format: decode it for real.
    decoded = decode_image(data)
    image = normalize_image(decoded, role=role)
    return image, ImageInfo(image.width, image.height, format=str(decoded.format))


def store_upload(data: bytes, storage: Storage) -> tuple[str, ImageInfo]:
    """Check `data` and store it as a new upload; return the upload's id and what the image is."""
    info = inspect_image(data)
    upload_id = uuid.uuid4().hex
    storage.put(upload_key(upload_id), data, info.content_type)
    return upload_id, info


def load_input_image(storage: Storage, ref: ImageRef, role: Role = "image") -> Image.Image:
    """The image a job names, read as `role` (core/images.py), for a worker; a missing or bad one fails
    the job with `bad_input`."""
    try:
        data = storage.get(ref.storage_key)
    except KeyError:
        raise BadInput(f"{_describe(ref)} no longer exists in storage; upload the image again") from None
    try:
        return open_image(data, role)
    except BadImage as error:
        raise BadInput(f"{_describe(ref)}: {error.message}") from error


def input_image_problems(
    params: Params, storage: Storage, seen: dict[str, ImageInfo | str]
) -> list[tuple[str, str]]:
    """`(field, message)` for each problem with a job's input images; empty when there is none.

    Each referenced image must exist and be a valid image; the fields that must match `image` must have
    its size; and the output, rounded down to multiples of 8, must be at least `MIN_SIZE` square pixels
    and fit `DIFFQ_MAX_PIXELS`. `seen` caches what was learnt per storage key,
    so that a batch whose jobs share an image reads it once.
    """
    problems: list[tuple[str, str]] = []
    infos: dict[str, ImageInfo] = {}
    for field in params.image_fields:
        ref = getattr(params, field)
        if ref is None:
            continue
        info = _lookup(storage, ref, seen)
        if isinstance(info, str):
            problems.append((field, info))
        else:
            infos[field] = info
    depth_map = infos.get("depth_map")
    if depth_map is not None and depth_map.flat:
        problems.append(("depth_map", FLAT_DEPTH_MAP))
    image = infos.get("image")
    if image is None:
        return problems
    for field in params.same_size_as_image:
        other = infos.get(field)
        if other is not None and (other.width, other.height) != (image.width, image.height):
            problems.append(
                (
                    field,
                    f"{field} is {other.width}×{other.height} but image is {image.width}×{image.height}; "
                    "they must be the same size",
                )
            )
    output = params.output_size((image.width, image.height))
    if problem := size_problem(*output):
        problems.append(("image", f"{problem}; send a larger image"))
    width, height = round_size(*output)
    limit = get_settings().max_pixels
    if width * height > limit:
        problems.append(
            (
                "image",
                f"the output would be {width}×{height} = {width * height} pixels; the limit is {limit} "
                "(DIFFQ_MAX_PIXELS); send a smaller image",
            )
        )
    return problems


def _lookup(storage: Storage, ref: ImageRef, seen: dict[str, ImageInfo | str]) -> ImageInfo | str:
    key = ref.storage_key
    if key not in seen:
        try:
            data = storage.get(key)
        except KeyError:
            seen[key] = f"{_describe(ref)} does not exist" + (
                "; upload the image with POST /v1/uploads first" if ref.upload else ""
            )
        else:
            try:
                seen[key] = inspect_image(data)
            except BadImage as error:
                seen[key] = f"{_describe(ref)}: {error.message}"
    return seen[key]


def _describe(ref: ImageRef) -> str:
    return f"upload {ref.upload!r}" if ref.upload is not None else f"storage key {ref.key!r}"
