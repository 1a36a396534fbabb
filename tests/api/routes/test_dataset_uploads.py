"""Dataset uploads at the door: a zip that can never be a training dataset (unreadable, no images) is a
422 at upload, and an image upload named as a training `dataset` a 422 at submission, naming the field.
FastAPI's TestClient on the real Postgres."""

import io
import zipfile

import pytest
from fastapi.testclient import TestClient

from tests.utils.images import noise_image, png_bytes


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def upload(api: TestClient, data: bytes, name: str = "data.zip"):
    return api.post("/v1/uploads", files={"file": (name, data)})


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"PK\x03\x04garbage", "starts like a zip but can't be read as one"),
        (zip_of({}), "the zip holds no images (.png, .jpg, .jpeg, .webp, .bmp) among its 0 files"),
        (
            zip_of({"metadata.jsonl": b'{"file_name": "a.png", "text": "a"}\n', "notes.txt": b"no images"}),
            "the zip holds no images",
        ),
        (zip_of({"__MACOSX/a.png": b"x", ".hidden/b.png": b"y"}), "the zip holds no images"),
        (
            zip_of({"../../evil.png": png_bytes(noise_image())}),
            "the zip's member '../../evil.png' has an unsafe path (absolute, or with '..' parts), so the zip "
            "is refused",
        ),
        (
            zip_of({"a.png": png_bytes(noise_image()), "/etc/b.png": b"x", "c\\..\\..\\d.png": b"y"}),
            "the zip's member '/etc/b.png' (and 1 more) has an unsafe path",
        ),
        (
            zip_of({"C:/x/a.png": png_bytes(noise_image())}),
            "the zip's member 'C:/x/a.png' has an unsafe path",
        ),
    ],
    ids=[
        "garbage",
        "empty",
        "no-images",
        "hidden-images-only",
        "dotdot",
        "absolute-and-backslashes",
        "drive",
    ],
)
def test_zip_that_can_never_be_a_dataset_is_422(api: TestClient, data: bytes, says: str) -> None:
    response = upload(api, data)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "file"] and says in error["msg"]


def _train(api: TestClient, dataset: str):
    params = {"dataset": dataset, "image_size": 32, "num_epochs": 1}
    return api.post("/v1/jobs", json={"type": "train_unconditional", "output_model": "m", "params": params})


def test_a_zip_of_images_is_a_dataset(api: TestClient) -> None:
    response = upload(api, zip_of({"pets/a.png": png_bytes(noise_image())}))
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "zip"
    assert _train(api, response.json()["id"]).status_code == 201


def test_an_image_upload_as_a_dataset_is_422(api: TestClient) -> None:
    image = upload(api, png_bytes(noise_image()), "a.png")
    assert image.status_code == 201 and image.json()["kind"] == "image"
    response = _train(api, image.json()["id"])
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "params", "dataset"]
    assert f"upload {image.json()['id']} is an image, not a dataset; zip the folder" in error["msg"]
