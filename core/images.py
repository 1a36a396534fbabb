"""How diffq reads every image it is given, and writes the ones it makes.

`read_image` is the one reader: job inputs, masks, depth maps and training images all go through it,
so that an image means the same thing wherever it is used. Its rules:

- Only PNG, JPEG, WebP and BMP are parsed; the EXIF orientation is applied (as diffusers' `load_image`).
- High bit depths are scaled to 8 bits by the full range of their mode: 16-bit ("I;16*") and 32-bit
  integer ("I", which Pillow uses for 16-bit PNGs too) samples are divided by 257 (65535 → 255),
  values outside 0..65535 clipped; floating point ("F") is clipped to 0..1 and multiplied by 255.
- An input image ("image") becomes RGB; transparent parts are composited onto white, as a flattened
  picture shows them.
- A mask ("mask") becomes L, white repainted and black kept. A mask with an alpha channel that is not
  fully opaque is read from its alpha alone, as painting tools and clients draw masks: transparent is
  repainted (white), opaque kept (black). An opaque mask is read from its luminance.
- A depth map ("depth") keeps its precision: 8-bit maps become L, deeper ones F on the same 0..255
  scale; colour maps are read by their luminance.

Output sizes are multiples of 8 (the VAE's factor in every Stable Diffusion family): an input's size
is rounded down by `round_size`, in every mode, and one under `MIN_SIZE` after rounding is refused.
"""

import contextlib
import io
import json
import re
import warnings
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from core.config import get_settings

PARAMETERS_KEY = "diffq"
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
# The smallest output side. At one latent pixel (8 px) a UNet whose norm groups hold one channel each
# (the tiny test models) fails without classifier-free guidance ("Expected more than 1 value per
# channel", found by the jobs fuzzer); two latent pixels (16 px) run on them and on Stable Diffusion's.
MIN_SIZE = 16
SIZE_MULTIPLE = 8

Role = Literal["image", "mask", "depth"]
# The pixel count in Pillow's decompression bomb message ("Image size (400000000 pixels) exceeds ...").
BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class BadImage(Exception):
    """An input image diffq refuses; `too_large` tells a size limit (413) from a bad file (422)."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.too_large = too_large


def decode_image(data: bytes) -> Image.Image:
    """`data` decoded as it is stored (its mode, no orientation applied); raises `BadImage`.

    The pixel limit (DIFFQ_MAX_UPLOAD_PIXELS) is checked from the header before the pixels are decoded,
    so that a small file that would decode to a huge bitmap (a decompression bomb) costs no memory;
    one past Pillow's own limit is refused by Pillow while it reads the header, with the same message.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            check_pixels(*image.size)
            image.load()
    except BadImage:
        raise
    except Exception as error:
        raise bad_image(error, data) from error
    return image


def check_pixels(width: int, height: int) -> None:
    """Raise `BadImage` (413) for an image of more than DIFFQ_MAX_UPLOAD_PIXELS pixels."""
    if width * height > get_settings().max_upload_pixels:
        raise too_many_pixels(f"{width}×{height} = {width * height}")


def too_many_pixels(pixels: str) -> BadImage:
    """The `BadImage` for an image of `pixels` pixels ("5000×5000 = 25000000"): over DIFFQ_MAX_UPLOAD_PIXELS,
    or over Pillow's decompression bomb limit where that is the lower."""
    limit = get_settings().max_upload_pixels
    pillow = Image.MAX_IMAGE_PIXELS
    if pillow is not None and pillow < limit:
        where = f"{pillow} (Pillow's decompression bomb limit, below DIFFQ_MAX_UPLOAD_PIXELS, {limit})"
    else:
        where = f"{limit} (DIFFQ_MAX_UPLOAD_PIXELS)"
    return BadImage(
        f"the image is {pixels} pixels; the limit is {where}; send a smaller image", too_large=True
    )


def bad_image(error: Exception, data: bytes) -> BadImage:
    """The `BadImage` for an error Pillow raised while reading `data` as an image."""
    if isinstance(error, Image.DecompressionBombError | Image.DecompressionBombWarning):
        # Pillow refuses before the size can be read back: its message holds the pixel count.
        found = BOMB_PIXELS.search(str(error))
        return too_many_pixels(found.group(1) if found else f"over {Image.MAX_IMAGE_PIXELS}")
    # Pillow's parsers raise many kinds of errors on malformed input (OSError, SyntaxError,
    # struct.error, ...); to a user they all mean the same thing.
    formats = ", ".join(IMAGE_FORMATS[:-1]) + f" or {IMAGE_FORMATS[-1]}"
    if isinstance(error, UnidentifiedImageError):  # its message shows our BytesIO object, not the file
        if (other := other_format(data)) is not None:
            return BadImage(f"an image in {other} format, which diffq does not take; convert it to {formats}")
        reason = f"{len(data)} bytes in no image format Pillow recognises"
    else:
        reason = str(error) or type(error).__name__
    return BadImage(f"not a decodable image ({reason}); send a {formats} file")


def other_format(data: bytes) -> str | None:
    """The image format outside `IMAGE_FORMATS` that Pillow reads `data`'s header as (e.g. "GIF", "TIFF"),
    or None. Only the header is read, not the pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.format
    except Exception:
        return None


def read_image(data: bytes, *, role: Role = "image") -> Image.Image:
    """Decode `data` as the module docstring says: RGB for an image, L for a mask, L or F for a depth map."""
    return normalize_image(decode_image(data), role=role)


def normalize_image(image: Image.Image, *, role: Role = "image") -> Image.Image:
    """A decoded image oriented and in the mode `role` asks for (see the module docstring)."""
    # A malformed EXIF block: diffusers' load_image would not turn the image either.
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image)
    if role == "mask":
        alpha = _alpha(image)
        if alpha is not None and alpha.getextrema()[0] < 255:
            return ImageOps.invert(alpha)
    if image.mode in _SIXTEEN_BIT or image.mode == "F":
        if role == "depth":
            return Image.fromarray(_scaled(image), "F")
        return Image.fromarray(np.round(_scaled(image)).astype(np.uint8), "L").convert(
            "L" if role == "mask" else "RGB"
        )
    if role == "image":
        if _alpha(image) is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    return image.convert("L")


def _alpha(image: Image.Image) -> Image.Image | None:
    """The image's alpha channel (a palette's transparency included), or None if it has none."""
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return image.getchannel("A")
    if image.mode == "P" and "transparency" in image.info:
        return image.convert("RGBA").getchannel("A")
    if image.mode in ("L", "RGB") and "transparency" in image.info:
        return image.convert("RGBA" if image.mode == "RGB" else "LA").getchannel("A")
    return None


def _scaled(image: Image.Image) -> np.ndarray:
    """A 16-bit, 32-bit or float image's samples on the 0..255 scale, as float32."""
    if image.mode == "F":
        return np.clip(np.asarray(image, dtype=np.float32), 0, 1) * 255
    samples = np.asarray(image).astype(np.float64)
    return (np.clip(samples, 0, 65535) / 257).astype(np.float32)


def round_size(width: int, height: int) -> tuple[int, int]:
    """`width`×`height` rounded down to multiples of 8: the size every mode makes from an input."""
    return width - width % SIZE_MULTIPLE, height - height % SIZE_MULTIPLE


def size_problem(width: int, height: int) -> str | None:
    """Why an input of `width`×`height` makes no image, or None when it does."""
    rounded = round_size(width, height)
    if min(rounded) < MIN_SIZE:
        return (
            f"the image is {width}×{height}, which rounds down to {rounded[0]}×{rounded[1]} (multiples of "
            f"{SIZE_MULTIPLE}); the minimum is {MIN_SIZE}×{MIN_SIZE}"
        )
    return None


def fit_image(image: Image.Image) -> Image.Image:
    """`image` resized to `round_size` of its size, as diffusers' image processor would (Lanczos)."""
    size = round_size(*image.size)
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def encode_png(image: Image.Image, parameters: dict[str, Any]) -> bytes:
    """PNG bytes with `parameters` as JSON in a text chunk, so the image says how to remake it."""
    info = PngInfo()
    info.add_text(PARAMETERS_KEY, json.dumps(parameters, sort_keys=True))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_parameters(data: bytes) -> dict[str, Any]:
    with Image.open(io.BytesIO(data)) as image:
        return json.loads(image.text[PARAMETERS_KEY])
