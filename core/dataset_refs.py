"""What a training job's `dataset` may name, and the cheap checks the API makes before accepting it.

- `builtin:<name>`: a small synthetic dataset that ships with diffq (rendered, not downloaded), so
  that training works offline. `builtin:glyphs` is colored shapes, each with a caption.
- an upload id (`POST /v1/uploads`): a zip of images, with captions in a `metadata.jsonl`.
- a storage prefix (`datasets/pets`): a folder of images in storage, with the same `metadata.jsonl`.

The folder layout is the `imagefolder` one of 🤗 datasets: image files anywhere below the root, and
optionally a `metadata.jsonl` whose lines name a `file_name` (relative to the file) and a caption
column (`text` unless the job says otherwise).
"""

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

from core.paths import BadKey, clean_key
from core.storage import Storage

BUILTIN_PREFIX = "builtin:"
BUILTIN_DATASETS = {"glyphs": "colored circles, squares, triangles and crosses on a plain background"}
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILE = "metadata.jsonl"


@dataclass(frozen=True)
class DatasetRef:
    kind: Literal["builtin", "upload", "prefix"]
    name: str

    @property
    def upload_key(self) -> str:
        return f"uploads/{self.name}"


def parse_dataset(ref: str) -> DatasetRef:
    """Read a `dataset` parameter; ValueError with what to write instead if it names nothing."""
    if ref.startswith(BUILTIN_PREFIX):
        name = ref.removeprefix(BUILTIN_PREFIX)
        if name not in BUILTIN_DATASETS:
            known = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_DATASETS)
            raise ValueError(f"unknown built-in dataset '{ref}'; the built-in ones are {known}")
        return DatasetRef("builtin", name)
    if UPLOAD_ID.match(ref):
        return DatasetRef("upload", ref)
    shown = repr(ref) if len(ref) <= 100 else f"{ref[:60]!r}..."
    try:
        prefix = clean_key(ref) if not ref.startswith("/") else None
    except BadKey as error:
        raise ValueError(
            f"dataset {shown} is neither 'builtin:<name>', an upload id nor a storage prefix such as "
            f"'datasets/pets': {error.reason}"
        ) from None
    if prefix is None:
        raise ValueError(
            f"dataset {shown} is neither 'builtin:<name>', an upload id nor a storage prefix "
            "such as 'datasets/pets' (a prefix is relative: no leading '/')"
        )
    return DatasetRef("prefix", prefix)


def dataset_problem(ref: DatasetRef, storage: Storage) -> str | None:
    """Why the dataset can't be read, as far as storage tells without reading it; None if it can."""
    if ref.kind == "upload" and not storage.exists(ref.upload_key):
        return f"no upload with id {ref.name}; upload the dataset zip with POST /v1/uploads first"
    if ref.kind == "prefix" and not any(
        key.lower().endswith(IMAGE_SUFFIXES) for key in storage.list(ref.name)
    ):
        return (
            f"storage prefix '{ref.name}' holds no images ({', '.join(IMAGE_SUFFIXES)}); "
            f"put the images (and a {METADATA_FILE} of captions) under it"
        )
    return None


def is_hidden(name: str) -> bool:
    """Whether a dataset's file `name` is left out: a dot file or folder, or macOS's `__MACOSX` folder."""
    return any(part.startswith((".", "__MACOSX")) for part in PurePosixPath(name).parts)


def unsafe_member(name: str) -> bool:
    """Whether a zip member's path would reach outside the folder it is unpacked into: absolute (`/`,
    `\\`, a drive letter like `C:`) or with a `..` part (a "zip slip"). Backslashes count as separators,
    as Windows tools write them."""
    path = name.replace("\\", "/")
    return path.startswith("/") or re.match(r"[A-Za-z]:", path) is not None or ".." in path.split("/")


def unsafe_members_problem(names: list[str]) -> str | None:
    """Why a zip with members `names` is refused for its paths; None when every path is relative."""
    unsafe = [name for name in names if unsafe_member(name)]
    if not unsafe:
        return None
    more = f" (and {len(unsafe) - 1} more)" if len(unsafe) > 1 else ""
    return (
        f"the zip's member {unsafe[0]!r}{more} has an unsafe path (absolute, or with '..' parts), so the "
        "zip is refused; zip the image folder again with paths relative to it"
    )


def zip_dataset_problem(data: bytes, max_unpacked_bytes: int) -> str | None:
    """Why the upload `data` can't be a training dataset zip, as far as its directory tells (no member is
    decompressed); None if it can. It must open as a zip, name only relative paths (`unsafe_member`),
    unpack to at most `max_unpacked_bytes`
    (DIFFQ_MAX_DATASET_BYTES) and hold at least one image (`IMAGE_SUFFIXES`, not hidden), as
    workers/training_data.py reads it. Images that don't decode fail the job later, by name."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
            members = [info for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as error:
        return f"the file starts like a zip but can't be read as one ({error}); zip the image folder again"
    if problem := unsafe_members_problem(names):
        return problem
    if (total := sum(info.file_size for info in members)) > max_unpacked_bytes:
        limit = max_unpacked_bytes
        return f"the zip unpacks to {total} bytes; the limit is {limit} (DIFFQ_MAX_DATASET_BYTES)"
    if not any(
        info.filename.lower().endswith(IMAGE_SUFFIXES) and not is_hidden(info.filename) for info in members
    ):
        return (
            f"the zip holds no images ({', '.join(IMAGE_SUFFIXES)}) among its {len(members)} files; a "
            f"training dataset zip holds images, and optionally a {METADATA_FILE} of captions"
        )
    return None
