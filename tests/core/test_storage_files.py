"""Files go to storage and back streamed: on S3 as multipart transfers, locally as file copies."""

import os
from pathlib import Path

import boto3
import pytest

from core.storage import LocalStorage, MiB, S3Storage, get_folder, put_folder


def test_s3_file_larger_than_a_part_goes_up_in_parts_and_comes_back_whole(s3: str, tmp_path: Path) -> None:
    storage = S3Storage("diffq-test", f"files-{tmp_path.name}", s3, 60, part_size=5 * MiB)
    source = tmp_path / "weights.safetensors"
    source.write_bytes(os.urandom(11 * MiB))

    storage.put_file("models/big/weights.safetensors", source)

    head = boto3.client("s3", endpoint_url=s3).head_object(
        Bucket="diffq-test", Key=storage.object_key("models/big/weights.safetensors")
    )
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 1 MiB: a multipart upload of 3 parts
    assert head["ContentLength"] == 11 * MiB
    copy = tmp_path / "copy.safetensors"
    storage.get_file("models/big/weights.safetensors", copy)
    assert copy.read_bytes() == source.read_bytes()
    with pytest.raises(KeyError):
        storage.get_file("models/big/missing", tmp_path / "missing")


def test_s3_small_file_is_one_object(s3: str, tmp_path: Path) -> None:
    storage = S3Storage("diffq-test", f"files-{tmp_path.name}", s3, 60, part_size=5 * MiB)
    source = tmp_path / "model_index.json"
    source.write_text("{}")
    storage.put_file("m/model_index.json", source, "application/json")
    head = boto3.client("s3", endpoint_url=s3).head_object(
        Bucket="diffq-test", Key=storage.object_key("m/model_index.json")
    )
    assert "-" not in head["ETag"] and head["ContentType"] == "application/json"
    assert storage.get("m/model_index.json") == b"{}"


def test_local_file_round_trip(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store", "http://127.0.0.1:8000")
    source = tmp_path / "checkpoint.bin"
    source.write_bytes(os.urandom(3 * MiB + 17))
    storage.put_file("checkpoints/j/step-1/model.bin", source)
    assert storage.list("checkpoints") == ["checkpoints/j/step-1/model.bin"]  # no partial file left
    copy = tmp_path / "copy.bin"
    storage.get_file("checkpoints/j/step-1/model.bin", copy)
    assert copy.read_bytes() == source.read_bytes()
    with pytest.raises(KeyError):
        storage.get_file("checkpoints/j/step-2/model.bin", tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_folder_of_large_files_round_trips_through_s3_in_parts(s3: str, tmp_path: Path) -> None:
    storage = S3Storage("diffq-test", f"files-{tmp_path.name}", s3, 60, part_size=5 * MiB)
    source = tmp_path / "model" / "unet"
    source.mkdir(parents=True)
    (source / "diffusion_pytorch_model.safetensors").write_bytes(os.urandom(6 * MiB))
    keys = put_folder(storage, tmp_path / "model", "models/m/1")
    assert keys == ["models/m/1/unet/diffusion_pytorch_model.safetensors"]
    get_folder(storage, "models/m/1", tmp_path / "copy")
    copied = tmp_path / "copy" / "unet" / "diffusion_pytorch_model.safetensors"
    assert copied.read_bytes() == (source / "diffusion_pytorch_model.safetensors").read_bytes()


def test_get_folder_refuses_a_key_that_leads_out_of_the_folder(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store", "http://127.0.0.1:8000")
    storage.put("models/m/1/a.txt", b"a")
    with pytest.raises(ValueError, match="bad storage key"):
        get_folder(storage, "models/m/1", tmp_path / "copy", keys=["models/m/1/../../x.txt"])


def test_local_storage_reads_a_name_too_long_for_the_file_system_as_missing(tmp_path: Path) -> None:
    """A root ~3,300 bytes deep and a 1,000-byte key make a path over Linux's PATH_MAX (4,096): the OS
    answers ENAMETOOLONG, which reads as no such file, not an OSError."""
    deep = tmp_path.joinpath(*["d" * 200] * 16)
    storage = LocalStorage(deep, "http://127.0.0.1:8000")
    key = "/".join(["k" * 249] * 4)
    assert not storage.exists(key)
    with pytest.raises(KeyError):
        storage.get(key)
    with pytest.raises(KeyError):
        storage.get_file(key, tmp_path / "copy")
    assert storage.list(key) == []


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("a" * 5000, "a part of 5000 bytes; each part between slashes may be at most 255 bytes"),
        ("a/" * 600, "1199 bytes long; a key may be at most 1024 bytes"),
        ("jobs/\x00.png", "NUL character"),
    ],
)
def test_clean_key_refuses_keys_no_backend_can_hold(key: str, says: str) -> None:
    from core.paths import clean_key

    with pytest.raises(ValueError, match=says):
        clean_key(key)
