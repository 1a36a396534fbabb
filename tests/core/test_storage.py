"""Listing, deleting and folder copies on both storage backends."""

from pathlib import Path

import pytest

from core.storage import LocalStorage, S3Storage, Storage, get_folder, put_folder


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "store", "http://127.0.0.1:8000")
    endpoint = request.getfixturevalue("s3")
    return S3Storage("diffq-test", f"listing-{tmp_path.name}", endpoint, 60)


def test_list_is_recursive_sorted_and_bounded_by_the_folder(storage: Storage) -> None:
    for key in ("a/2.txt", "a/1.txt", "a/b/3.txt", "ab/4.txt", "c.txt"):
        storage.put(key, key.encode())
    assert storage.list("a") == ["a/1.txt", "a/2.txt", "a/b/3.txt"]  # not ab/4.txt
    assert storage.list("a/b/") == ["a/b/3.txt"]
    assert storage.list("missing") == []


def test_delete(storage: Storage) -> None:
    storage.put("d/x", b"1")
    storage.delete("d/x")
    assert not storage.exists("d/x") and storage.list("d") == []
    storage.delete("d/never-there")  # deleting what is gone is fine


def test_folder_round_trip(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "model"
    (source / "unet").mkdir(parents=True)
    (source / "model_index.json").write_text("{}")
    (source / "unet" / "weights.bin").write_bytes(b"\x00\x01")
    keys = put_folder(storage, source, "models/m/1")
    assert keys == ["models/m/1/model_index.json", "models/m/1/unet/weights.bin"]
    copy = tmp_path / "copy"
    get_folder(storage, "models/m/1", copy)
    assert (copy / "unet" / "weights.bin").read_bytes() == b"\x00\x01"
    assert (copy / "model_index.json").read_text() == "{}"
