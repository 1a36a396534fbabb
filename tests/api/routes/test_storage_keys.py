"""Storage keys too long for any backend (a part over 255 bytes, over 1024 in all) are refused where they
are read: `/v1/files/<key>`, an input image's `key`, a training `dataset` prefix; a 4xx saying what to fix,
never a 500 from the file system. FastAPI's TestClient on the real Postgres."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

LONG = "a" * 300


@pytest.fixture
def local_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The API on a local storage folder (`file://`) for one test, then back on S3."""
    from core.config import get_settings
    from core.storage import get_storage

    monkeypatch.setenv("DIFFQ_STORAGE_URL", f"file://{tmp_path / 'store'}")
    get_settings.cache_clear()
    get_storage.cache_clear()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()
    get_storage.cache_clear()


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("a" * 5000, "each part between slashes may be at most 255 bytes"),
        ("jobs/" + "/".join(["b" * 200] * 6), "a key may be at most 1024 bytes"),
    ],
)
def test_files_route_refuses_a_key_too_long_with_422(
    api: TestClient, local_storage: None, key: str, says: str
) -> None:
    response = api.get(f"/v1/files/{key}")
    assert response.status_code == 422, response.text
    assert says in response.text
    assert api.get("/v1/files/jobs/nothing/here.png").status_code == 404


def _own_job(api: TestClient) -> str:
    body = {"type": "text2img", "model": "tiny-sd", "params": {"prompt": "a fox", "num_inference_steps": 2}}
    created = api.post("/v1/jobs", json=body)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def test_image_key_with_a_part_too_long_is_422(api: TestClient) -> None:
    image = {"key": f"jobs/{_own_job(api)}/{LONG}.png"}
    response = api.post(
        "/v1/jobs", json={"type": "img2img", "model": "tiny-sd", "params": {"prompt": "a", "image": image}}
    )
    assert response.status_code == 422, response.text
    assert (
        "is not a storage key: a part of 304 bytes; each part between slashes may be at most 255"
        in response.text
    )


def test_dataset_prefix_with_a_part_too_long_is_422(api: TestClient) -> None:
    params = {"dataset": f"jobs/{_own_job(api)}/{LONG}", "image_size": 32, "num_epochs": 1}
    response = api.post(
        "/v1/jobs", json={"type": "train_unconditional", "output_model": "m", "params": params}
    )
    assert response.status_code == 422, response.text
    assert "a part of 300 bytes; each part between slashes may be at most 255" in response.text
