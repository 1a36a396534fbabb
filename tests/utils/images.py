"""Input images for the image-to-image tests, made on the spot."""

import io

import numpy as np
from PIL import Image


def noise_image(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def square_mask(width: int = 64, height: int = 64) -> Image.Image:
    """White (repaint) in the middle, black (keep) around it."""
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return mask


def gradient_depth(width: int = 64, height: int = 64) -> Image.Image:
    """Near at the bottom, far at the top, as a greyscale depth map."""
    column = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    return Image.fromarray(np.repeat(column, width, axis=1).astype(np.uint8), "L")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def as_array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)
