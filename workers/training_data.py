"""Training data for a job: its `dataset` read, checked and turned into a tensor of square images.

Images are resized so that their shorter side is the training size, then center-cropped, as
diffusers' training scripts do, and kept as uint8 (a quarter of the memory of floats); a batch is
scaled to [-1, 1] when it is drawn. Images are read by `core.images.read_image`, as job inputs are (EXIF
orientation, bit depth, transparency onto white). A dataset that has no images, or an image that does
not decode, fails the job with `bad_input` and the file's name.
"""

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import torch
from PIL import Image

from core.config import get_settings
from core.dataset_refs import IMAGE_SUFFIXES, METADATA_FILE, is_hidden, parse_dataset, unsafe_members_problem
from core.errors import BadInput
from core.images import BadImage, read_image
from core.storage import Storage
from workers.glyphs import render_glyphs


@dataclass
class TrainingImages:
    pixels: torch.Tensor  # N × 3 × size × size, uint8
    captions: list[str | None]

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, indices: torch.Tensor, flips: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Images `indices` as floats in [-1, 1], those with `flips` set mirrored left-right."""
        images = self.pixels[indices].to(device=device, dtype=torch.float32) / 127.5 - 1
        return torch.where(flips[:, None, None, None].to(device), images.flip(-1), images)


def load_training_images(
    dataset: str, size: int, storage: Storage, caption_column: str = "text", need_captions: bool = False
) -> TrainingImages:
    ref = parse_dataset(dataset)
    if ref.kind == "builtin":
        examples = render_glyphs(size)
        return TrainingImages(_to_tensor([image for image, _ in examples], size), [c for _, c in examples])
    if ref.kind == "upload":
        try:
            data = storage.get(ref.upload_key)
        except KeyError:
            raise BadInput(f"dataset upload {ref.name} no longer exists; upload the zip again") from None
        files = _unzip(data, ref.name)
    else:
        files = {key.removeprefix(ref.name + "/"): storage.get(key) for key in storage.list(ref.name)}
    return _imagefolder(files, dataset, size, caption_column, need_captions)


def _unzip(data: bytes, upload_id: str) -> dict[str, bytes]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise BadInput(
            f"dataset upload {upload_id} is not a zip file; zip the image folder and upload it"
        ) from None
    with archive:
        # Refused at upload; checked again for a zip stored before that check.
        if problem := unsafe_members_problem(archive.namelist()):
            raise BadInput(f"dataset upload {upload_id}: {problem}")
        members = [info for info in archive.infolist() if not info.is_dir()]
        limit = get_settings().max_dataset_bytes
        if (total := sum(info.file_size for info in members)) > limit:
            raise BadInput(
                f"dataset upload {upload_id} unpacks to {total} bytes; the limit is {limit} "
                "(DIFFQ_MAX_DATASET_BYTES)"
            )
        return {info.filename: archive.read(info) for info in members}


def _imagefolder(
    files: dict[str, bytes], dataset: str, size: int, caption_column: str, need_captions: bool
) -> TrainingImages:
    """The `imagefolder` layout: images anywhere, captions in `metadata.jsonl` files beside them."""
    files = {name: data for name, data in files.items() if not is_hidden(name)}
    captions = _captions(files, dataset, caption_column)
    names = sorted(name for name in files if name.lower().endswith(IMAGE_SUFFIXES))
    if not names:
        raise BadInput(
            f"dataset '{dataset}' has no images ({', '.join(IMAGE_SUFFIXES)}); it holds "
            f"{len(files)} other files"
        )
    if need_captions and (missing := [name for name in names if not captions.get(name)]):
        raise BadInput(
            f"dataset '{dataset}': {len(missing)} of {len(names)} images have no caption "
            f"(first: {missing[0]}); "
            f"give each a line in {METADATA_FILE} with its file_name and a '{caption_column}'"
        )
    images = []
    for name in names:
        try:
            images.append(read_image(files[name], role="image"))
        except BadImage as error:
            raise BadInput(f"dataset '{dataset}': image {name} can't be read ({error.message})") from None
    return TrainingImages(_to_tensor(images, size), [captions.get(name) for name in names])


def _captions(files: dict[str, bytes], dataset: str, caption_column: str) -> dict[str, str]:
    """Image path → caption, from every `metadata.jsonl` (each names files relative to its folder)."""
    captions: dict[str, str] = {}
    for name, data in files.items():
        path = PurePosixPath(name)
        if path.name != METADATA_FILE:
            continue
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                file_name = row["file_name"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise BadInput(
                    f"dataset '{dataset}': line {number} of {name} is not a JSON object with a 'file_name'"
                ) from None
            if caption_column in row:
                captions[str(path.parent / file_name).removeprefix("./")] = str(row[caption_column])
    return captions


def _to_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(_square(image, size)) for image in images])).permute(
        0, 3, 1, 2
    )


def _square(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size`, then crop the center square."""
    if image.size != (size, size):
        scale = size / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = (width - size) // 2, (height - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return image
