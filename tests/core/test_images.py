"""The one image reader: every mode, bit depth and alpha convention read as the module docstring says."""

import io

import numpy as np
import pytest
from PIL import Image

from core.images import MIN_SIZE, BadImage, fit_image, read_image, round_size, size_problem
from tests.utils.images import png_bytes


def gradient_16bit(width: int = 256, height: int = 4) -> Image.Image:
    """A horizontal 16-bit greyscale gradient 0..65535."""
    row = np.linspace(0, 65535, width).round().astype(np.uint16)
    return Image.fromarray(np.repeat(row[None], height, axis=0))


def test_16bit_greyscale_reads_as_the_8bit_gradient() -> None:
    source = gradient_16bit()
    data = png_bytes(source)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    image = read_image(data, role="image")
    assert image.mode == "RGB" and image.size == (256, 4)
    expected = np.round(np.asarray(source, dtype=np.float64) / 257).astype(np.uint8)
    got = np.asarray(image)
    assert (got == expected[..., None]).all()
    # The whole range is there: black at the left, white at the right, not clamped to white.
    assert got[0, 0, 0] == 0 and got[0, -1, 0] == 255 and got[0, 128, 0] == 128


def test_16bit_depth_keeps_its_precision_on_the_8bit_scale() -> None:
    source = gradient_16bit()
    depth = read_image(png_bytes(source), role="depth")
    assert depth.mode == "F"
    np.testing.assert_allclose(np.asarray(depth), np.asarray(source, dtype=np.float32) / 257, rtol=1e-6)
    assert read_image(png_bytes(Image.new("L", (8, 8), 7)), role="depth").mode == "L"


def test_float_image_is_clipped_to_0_1_and_scaled() -> None:
    from core.images import normalize_image

    values = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]], dtype=np.float32)
    image = normalize_image(Image.fromarray(values, "F"), role="mask")
    assert image.mode == "L"
    assert np.asarray(image).tolist() == [[0, 0, 128, 255, 255]]


def transparent_square_mask(width: int = 64, height: int = 48) -> Image.Image:
    """Opaque black with a fully transparent square in the middle: 'repaint here' in painting tools."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (width // 4, height // 4, 3 * width // 4, 3 * height // 4))
    return mask


def test_rgba_mask_is_read_from_its_alpha() -> None:
    mask = read_image(png_bytes(transparent_square_mask()), role="mask")
    expected = np.zeros((48, 64), dtype=np.uint8)
    expected[12:36, 16:48] = 255
    assert mask.mode == "L"
    assert (np.asarray(mask) == expected).all()


def test_opaque_rgba_mask_is_read_from_its_luminance() -> None:
    mask = Image.new("RGBA", (16, 16), (0, 0, 0, 255))
    mask.paste((255, 255, 255, 255), (4, 4, 12, 12))
    got = np.asarray(read_image(png_bytes(mask), role="mask"))
    assert got[8, 8] == 255 and got[0, 0] == 0


def test_la_and_palette_masks_with_transparency_are_read_from_alpha() -> None:
    la = Image.new("LA", (16, 16), (0, 255))
    la.paste((0, 0), (0, 0, 8, 16))
    assert np.asarray(read_image(png_bytes(la), role="mask"))[:, :8].min() == 255
    assert np.asarray(read_image(png_bytes(la), role="mask"))[:, 8:].max() == 0
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 255, 255, 255])
    palette.paste(1, (0, 0, 8, 16))
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=1)  # index 1 (the left half) transparent
    got = np.asarray(read_image(buffer.getvalue(), role="mask"))
    assert got[:, :8].min() == 255 and got[:, 8:].max() == 0


def test_rgba_image_is_composited_onto_white() -> None:
    image = Image.new("RGBA", (8, 8), (10, 20, 30, 255))
    image.paste((200, 0, 0, 0), (0, 0, 4, 8))  # transparent red: hidden
    image.paste((0, 0, 0, 128), (4, 0, 8, 4))  # half-transparent black: grey
    got = np.asarray(read_image(png_bytes(image), role="image"))
    assert got[0, 0].tolist() == [255, 255, 255]
    assert got[7, 7].tolist() == [10, 20, 30]
    assert 120 <= got[0, 7, 0] <= 135


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "LA", "RGB"])
def test_every_mode_reads_as_rgb_image_and_l_mask(mode: str) -> None:
    image = Image.new("RGB", (16, 8), (255, 255, 255)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    assert read_image(buffer.getvalue(), role="image").mode == "RGB"
    mask = read_image(buffer.getvalue(), role="mask")
    assert mask.mode == "L" and np.asarray(mask).min() >= 250


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 16), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 8, 16))  # white at the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    read = read_image(buffer.getvalue(), role="image")
    assert read.size == (16, 40)
    assert np.asarray(read)[:8, :, 0].mean() > 200  # the white left edge is now at the top


def test_training_images_use_the_reader() -> None:
    """A dataset image in 16 bits or with EXIF orientation trains as the job inputs read it."""
    from workers.training_data import _imagefolder

    data = png_bytes(gradient_16bit(8, 8))
    images = _imagefolder({"a.png": data}, "test", 8, "text", need_captions=False)
    got = images.pixels[0, 0].numpy()
    assert (got == np.asarray(read_image(data))[..., 0]).all()
    assert got.max() == 255 and got.min() == 0


def test_not_an_image_is_bad_image() -> None:
    with pytest.raises(BadImage, match="not a decodable image"):
        read_image(b"nope", role="image")


def test_sizes_round_down_to_multiples_of_8_and_have_a_minimum() -> None:
    assert round_size(100, 75) == (96, 72)
    assert round_size(64, 64) == (64, 64)
    assert size_problem(100, 75) is None
    assert size_problem(MIN_SIZE, MIN_SIZE) is None
    problem = size_problem(4, 4)
    assert problem is not None and "0×0" in problem and f"minimum is {MIN_SIZE}×{MIN_SIZE}" in problem
    assert fit_image(Image.new("RGB", (100, 75))).size == (96, 72)
