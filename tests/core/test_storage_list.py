"""Listing stored outputs by key prefix, on both backends."""

import uuid

import pytest

from core.storage import LocalStorage, S3Storage, Storage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path, "http://127.0.0.1:8000")
    from tests.conftest import BUCKET

    endpoint = request.getfixturevalue("s3")
    return S3Storage(BUCKET, f"list-test-{uuid.uuid4().hex[:8]}", endpoint, 60)


def test_list_by_prefix(storage) -> None:
    for key in ("jobs/a/0.png", "jobs/a/1.png", "jobs/ab/0.png", "jobs/b/sub/0.png", "top.txt"):
        storage.put(key, b"x")
    assert storage.list("jobs/a/") == ["jobs/a/0.png", "jobs/a/1.png"]
    assert storage.list("jobs/a") == ["jobs/a/0.png", "jobs/a/1.png"]  # a folder, not jobs/ab
    assert storage.list("jobs/b/") == ["jobs/b/sub/0.png"]
    assert storage.list("jobs/c/") == []
    assert len(storage.list("")) == 5


def test_local_list_skips_files_being_written(tmp_path) -> None:
    storage = LocalStorage(tmp_path, "http://127.0.0.1:8000")
    storage.put("jobs/a/0.png", b"x")
    (tmp_path / "jobs" / "a" / ".1.png.0123.part").write_bytes(b"half")  # a writer that died
    assert storage.list("jobs/a/") == ["jobs/a/0.png"]
    with pytest.raises(ValueError):
        storage.list("../")
