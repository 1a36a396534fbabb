"""Input images for the image-to-image tests, made on the spot."""

import io
import struct
import zlib

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


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` × `height` (8-bit grey) and whose one IDAT holds a few zero bytes:
    what a decompression bomb looks like to a reader of its header, at any claimed size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
