"""Fetching a finished batch's outputs and manifest into a folder."""

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from cli.client import Client


def output_name(index: int, output: int, total: int) -> str:
    """`<job index>_<output>.png`, the index padded so that the files sort in batch order."""
    return f"{index:0{len(str(max(total - 1, 0)))}d}_{output}.png"


def download_batch(client: Client, batch_id: str, folder: Path, threads: int = 8) -> list[Path]:
    """Write every output of the batch into `folder`, with `manifest.json` and `manifest.csv`; each
    manifest entry's outputs gain a `file` naming their local copy. Returns the image paths."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = client.manifest(batch_id)
    total = len(manifest["jobs"])
    wanted: list[tuple[dict[str, Any], Path]] = []
    for job in manifest["jobs"]:
        for number, output in enumerate(job["outputs"]):
            path = folder / output_name(job["index"], number, total)
            output["file"] = path.name
            wanted.append((output, path))

    def fetch(item: tuple[dict[str, Any], Path]) -> Path:
        output, path = item
        path.write_bytes(client.download(output["url"]))
        return path

    with ThreadPoolExecutor(max_workers=threads) as pool:
        paths = list(pool.map(fetch, wanted))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (folder / "manifest.csv").write_text(client.manifest_csv(batch_id))
    return paths


def is_image(output: dict[str, Any]) -> bool:
    return str(output.get("content_type", "")).startswith("image/")


def download_job(client: Client, job: dict[str, Any], folder: Path) -> list[Path]:
    """Write the job's images (generated images, training sample grids) into `folder`, each under its
    storage key relative to the job (`0.png`, `samples/…png`). Returns their paths."""
    prefix = f"jobs/{job['id']}/"
    paths = []
    for output in job["outputs"]:
        if not is_image(output):
            continue
        path = folder / output["key"].removeprefix(prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(client.download(output["url"]))
        paths.append(path)
    return paths


def local_path(key: str) -> Path | None:
    """Where an output is on this machine, when storage is a local folder that has it."""
    from urllib.parse import urlparse

    from core.config import get_settings
    from core.storage import LocalStorage, make_storage

    settings = get_settings()
    if urlparse(settings.storage_url).scheme != "file":
        return None
    storage = make_storage(settings)
    if isinstance(storage, LocalStorage) and storage.exists(key):
        return storage.path(key)
    return None
