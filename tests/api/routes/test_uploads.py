"""Input images at the door: uploads that are not images or too large, and jobs whose images do not fit."""

import io

import httpx
import pytest
from PIL import Image

from core.config import get_settings
from tests.utils.images import noise_image, png_bytes, png_header, square_mask
from tests.utils.jobs import upload_image


def post_file(api, data: bytes, name: str = "image.png") -> httpx.Response:
    return api.post("/v1/uploads", files={"file": (name, data)})


def submit(api, type_: str, params: dict, model: str = "tiny-sd") -> httpx.Response:
    spec = {"type": type_, "model": model, "params": {"prompt": "a squirrel"} | params}
    return api.post("/v1/jobs", json=spec)


def errors_by_field(response: httpx.Response) -> dict[str, str]:
    return {str(error["loc"][-1]): error["msg"] for error in response.json()["detail"]}


def test_upload_an_image(api) -> None:
    buffer = io.BytesIO()
    noise_image(96, 64).save(buffer, format="JPEG")
    response = post_file(api, buffer.getvalue(), "photo.jpg")
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["width"], body["height"], body["format"]) == (96, 64, "JPEG")
    assert body["key"] == f"uploads/{body['id']}" and body["image"] == {"upload": body["id"]}


def test_exif_orientation_is_applied_to_the_size(api) -> None:
    image = noise_image(96, 64)
    exif = image.getexif()
    exif[0x0112] = 6  # turned a quarter: displayed 64 wide, 96 high, as diffusers' load_image turns it
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    body = post_file(api, buffer.getvalue()).json()
    assert (body["width"], body["height"]) == (64, 96)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"hello, this is text", "not a decodable image"),
        (png_bytes(noise_image())[:300], "not a decodable image"),  # truncated
        (b"GIF89a" + b"\x00" * 100, "not a decodable image"),  # a format that is not parsed at all
    ],
    ids=["text", "truncated-png", "gif"],
)
def test_not_an_image_is_422(api, data: bytes, words: str) -> None:
    response = post_file(api, data)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "file"]
    assert words in error["msg"] and "PNG, JPEG, WEBP or BMP" in error["msg"]


def test_decompression_bomb_is_413_before_decoding(api) -> None:
    # 5000 × 5000 of one colour: a few kilobytes that would decode to 75 MB.
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, format="PNG", optimize=True)
    assert len(buffer.getvalue()) < 100_000
    response = post_file(api, buffer.getvalue())
    assert response.status_code == 413
    assert "5000×5000 = 25000000 pixels" in response.json()["detail"]


@pytest.mark.parametrize(
    ("side", "pixels"),
    [
        (5000, "5000×5000 = 25000000"),  # over DIFFQ_MAX_UPLOAD_PIXELS only
        (10000, "100000000"),  # over Pillow's limit too (its warning)
        (20000, "400000000"),  # over twice Pillow's limit (its error)
    ],
)
def test_every_oversized_header_gets_diffqs_message(api, side: int, pixels: str) -> None:
    """Past Pillow's own limit Pillow refuses while reading the header: the answer still names
    DIFFQ_MAX_UPLOAD_PIXELS, not Pillow's "could be decompression bomb DOS attack"."""
    limit = get_settings().max_upload_pixels
    expected = (
        f"the image is {pixels} pixels; the limit is {limit} (DIFFQ_MAX_UPLOAD_PIXELS); send a smaller image"
    )
    response = post_file(api, png_header(side, side))
    assert response.status_code == 413, response.text
    assert response.json()["detail"] == expected
    # An image a job names goes through the same check: an upload stored before the limit was lowered.
    from core.images import BadImage, read_image

    with pytest.raises(BadImage) as raised:
        read_image(png_header(side, side))
    assert raised.value.message == expected and raised.value.too_large


def test_over_the_byte_limit_is_413(api) -> None:
    limit = get_settings().max_upload_bytes
    response = post_file(api, b"\x89PNG" + b"\x00" * limit)
    assert response.status_code == 413
    assert f"the limit is {limit}" in response.text or f"over {limit} bytes" in response.text


def test_upload_without_a_file_is_422(api) -> None:
    response = api.post("/v1/uploads", data={"not_file": "x"})
    assert response.status_code == 422
    assert "multipart field 'file'" in response.text


def test_mask_of_another_size_is_422(api) -> None:
    image = upload_image(api, noise_image(64, 64))
    mask = upload_image(api, square_mask(64, 48))
    response = submit(api, "inpaint", {"image": image, "mask_image": mask})
    assert response.status_code == 422
    assert errors_by_field(response) == {
        "mask_image": "mask_image is 64×48 but image is 64×64; they must be the same size"
    }


def test_depth_map_of_another_size_is_422(api) -> None:
    image = upload_image(api, noise_image(64, 64))
    depth = upload_image(api, square_mask(32, 32))
    response = submit(api, "depth2img", {"image": image, "depth_map": depth}, model="tiny-sd-depth")
    assert response.status_code == 422
    assert "depth_map is 32×32 but image is 64×64" in errors_by_field(response)["depth_map"]


def test_output_over_the_pixel_limit_is_422(api) -> None:
    big = upload_image(api, Image.new("RGB", (1104, 1000)))
    response = submit(api, "img2img", {"image": big})
    assert response.status_code == 422
    assert (
        "the output would be 1104×1000 = 1104000 pixels; the limit is 1048576"
        in errors_by_field(response)["image"]
    )


@pytest.mark.parametrize(
    ("image", "words"),
    [
        ({"upload": "0" * 32}, "upload '00000000000000000000000000000000' does not exist"),
        ({"key": "jobs/nothing/here.png"}, "storage key 'jobs/nothing/here.png' does not exist"),
        ({"key": "../../etc/passwd"}, "is not a storage key"),
        ({"upload": "not-an-id"}, "should match pattern"),
        ({"upload": "0" * 32, "key": "a.png"}, "give exactly one of"),
    ],
)
def test_bad_image_reference_is_422(admin_api, image: dict, words: str) -> None:
    """As an admin, who may name any storage key (others: tests/api/routes/test_owners.py)."""
    response = submit(admin_api, "img2img", {"image": image})
    assert response.status_code == 422
    assert words in response.text


def test_stored_object_that_is_not_an_image_is_422(admin_api) -> None:
    """An admin's key may name any object in storage, such as a manifest someone stored there."""
    from core.storage import get_storage

    get_storage().put("notes/readme.txt", b"not an image")
    response = submit(admin_api, "img2img", {"image": {"key": "notes/readme.txt"}})
    assert response.status_code == 422
    assert "storage key 'notes/readme.txt': not a decodable image" in errors_by_field(response)["image"]


def test_strength_that_runs_no_step_is_422(api) -> None:
    image = upload_image(api, noise_image())
    response = submit(api, "img2img", {"image": image, "strength": 0.1, "num_inference_steps": 5})
    assert response.status_code == 422
    assert "runs no denoising step" in response.text


@pytest.mark.parametrize(
    "depth",
    [Image.new("I;16", (64, 64), 0), Image.new("RGB", (64, 64), (200, 0, 0)), Image.new("L", (64, 64), 255)],
    ids=["black-16-bit", "solid-red", "white"],
)
def test_a_flat_depth_map_is_422(api, depth: Image.Image) -> None:
    # Accepted, it made every latent NaN: diffusers scales the depths by (max - min) = 0.
    image = upload_image(api, noise_image(64, 64))
    flat = upload_image(api, depth)
    response = submit(api, "depth2img", {"image": image, "depth_map": flat}, model="tiny-sd-depth")
    assert response.status_code == 422, response.text
    assert "same value at every pixel" in errors_by_field(response)["depth_map"]
    # A depth map with depth in it is taken.
    ramp = Image.linear_gradient("L").resize((64, 64))
    good = submit(
        api, "depth2img", {"image": image, "depth_map": upload_image(api, ramp)}, model="tiny-sd-depth"
    )
    assert good.status_code == 201, good.text
