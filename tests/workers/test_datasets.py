"""Reading training datasets: the imagefolder layout from a zip or a storage prefix, and the glyphs."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import BadInput
from core.storage import LocalStorage
from workers.glyphs import render_glyphs
from workers.training_data import load_training_images

UPLOAD = "a" * 32


def png(color: tuple[int, int, int], size: tuple[int, int] = (40, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def zipped(files: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store", "http://127.0.0.1:8000")


def test_zip_in_imagefolder_layout(storage: LocalStorage) -> None:
    metadata = "\n".join(
        json.dumps(row)
        for row in ({"file_name": "red.png", "text": "red"}, {"file_name": "sub/blue.png", "text": "blue"})
    )
    storage.put(
        f"uploads/{UPLOAD}",
        zipped(
            {
                "data/metadata.jsonl": metadata,
                "data/red.png": png((255, 0, 0)),
                "data/sub/blue.png": png((0, 0, 255), size=(20, 40)),
                "data/.DS_Store": "junk",
                "__MACOSX/data/._red.png": "junk",
            }
        ),
    )
    dataset = load_training_images(UPLOAD, 8, storage, need_captions=True)
    assert dataset.captions == ["red", "blue"]
    assert dataset.pixels.shape == (2, 3, 8, 8) and dataset.pixels.dtype == torch.uint8
    assert dataset.pixels[0, 0].eq(255).all() and dataset.pixels[1, 2].eq(255).all()
    batch = dataset.batch(torch.tensor([1]), torch.tensor([False]), torch.device("cpu"))
    assert batch.min() == -1 and batch.max() == 1


def test_storage_prefix(storage: LocalStorage) -> None:
    storage.put("datasets/set/one.jpg", png((0, 255, 0)))
    storage.put(
        "datasets/set/metadata.jsonl", json.dumps({"file_name": "one.jpg", "caption": "green"}).encode()
    )
    dataset = load_training_images("datasets/set", 4, storage, caption_column="caption")
    assert dataset.captions == ["green"] and len(dataset) == 1


@pytest.mark.parametrize(
    ("files", "need_captions", "words"),
    [
        ({"readme.txt": "hi"}, False, "has no images"),
        ({"broken.png": b"not a png"}, False, "image broken.png can't be read"),
        ({"a.png": png((1, 2, 3))}, True, "1 of 1 images have no caption"),
        ({"a.png": png((1, 2, 3)), "metadata.jsonl": "[1, 2]"}, False, "line 1 of metadata.jsonl"),
    ],
)
def test_bad_datasets_fail_with_bad_input(storage, files, need_captions, words) -> None:
    storage.put(f"uploads/{UPLOAD}", zipped(files))
    with pytest.raises(BadInput, match=words):
        load_training_images(UPLOAD, 8, storage, need_captions=need_captions)


def test_not_a_zip_and_a_missing_upload(storage: LocalStorage) -> None:
    storage.put(f"uploads/{UPLOAD}", b"plain bytes")
    with pytest.raises(BadInput, match="is not a zip file"):
        load_training_images(UPLOAD, 8, storage)
    with pytest.raises(BadInput, match="no longer exists"):
        load_training_images("b" * 32, 8, storage)


def test_glyphs_are_deterministic_and_captioned(storage: LocalStorage) -> None:
    first, again = render_glyphs(16, count=8), render_glyphs(16, count=8)
    assert [caption for _, caption in first][:4] == [
        "a red circle",
        "a red square",
        "a red triangle",
        "a red cross",
    ]
    for (image, _), (same, _) in zip(first, again, strict=True):
        assert np.array_equal(np.asarray(image), np.asarray(same))
    dataset = load_training_images("builtin:glyphs", 16, storage)
    assert dataset.pixels.shape == (256, 3, 16, 16)


def test_an_oversized_image_in_a_dataset_names_the_pixel_limit(storage: LocalStorage) -> None:
    """A dataset's images are decoded by the worker: one whose header claims 20000×20000 fails the job
    naming it and DIFFQ_MAX_UPLOAD_PIXELS, not with Pillow's decompression bomb text."""
    from core.config import get_settings
    from tests.utils.images import png_header

    storage.put(f"uploads/{UPLOAD}", zipped({"a.png": png((1, 2, 3)), "big.png": png_header(20000, 20000)}))
    with pytest.raises(BadInput) as raised:
        load_training_images(UPLOAD, 16, storage)
    limit = get_settings().max_upload_pixels
    assert raised.value.message.endswith(
        f"image big.png can't be read (the image is 400000000 pixels; the limit is {limit} "
        "(DIFFQ_MAX_UPLOAD_PIXELS); send a smaller image)"
    )


def test_a_stored_zip_with_an_unsafe_member_fails_the_job_naming_it(storage: LocalStorage) -> None:
    storage.put(f"uploads/{UPLOAD}", zipped({"a.png": png((1, 2, 3)), "../evil.png": png((4, 5, 6))}))
    with pytest.raises(BadInput) as raised:
        load_training_images(UPLOAD, 16, storage)
    assert "the zip's member '../evil.png' has an unsafe path" in raised.value.message
