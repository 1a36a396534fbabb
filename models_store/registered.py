"""Registered models on a worker: fetched from storage into the models dir on first use.

A registered model's files live in storage under its prefix (`models/<name>/<job id>`). A worker
copies them into `<models dir>/.registry/<name>/<job id>` once, and then loads that folder like any
other. A replaced model has a new prefix, hence a new folder: a cached old version is never mistaken
for the new one.
"""

import shutil
import uuid
from pathlib import Path

from core.db import db_session
from core.errors import BadModel
from core.model_registry import find_model
from core.paths import PathEscapeError, safe_join
from core.storage import Storage, get_folder, get_storage
from models_store.resolve import model_exists, resolve_model

REGISTRY_DIR = ".registry"


def resolve_job_model(ref: str, models_dir: Path, storage: Storage | None = None) -> Path:
    """The local folder of a job's model: a folder in the models dir, a registered model (fetched
    from storage), or a Hub repo id, in that order."""
    if model_exists(ref, models_dir) or "/" in ref:
        return resolve_model(ref, models_dir)
    folder = fetch_registered(ref, models_dir, storage or get_storage())
    return folder if folder is not None else resolve_model(ref, models_dir)


def fetch_registered(name: str, models_dir: Path, storage: Storage) -> Path | None:
    """The local copy of the registered model `name`, fetched now if this worker has none; None if no
    model of that name is registered."""
    with db_session() as session:
        model = find_model(session, name)
    if model is None:
        return None
    version = model.storage_prefix.rstrip("/").rsplit("/", 1)[-1]
    try:
        folder = safe_join(Path(models_dir) / REGISTRY_DIR, f"{name}/{version}")
    except PathEscapeError as error:
        raise BadModel(f"registered model '{name}' can't be fetched into the models dir: {error}") from None
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Fetched into a hidden folder and renamed, so a half-fetched model is never taken for one.
    staging = folder.parent / f".{version}-{uuid.uuid4().hex[:8]}"
    try:
        if not get_folder(storage, model.storage_prefix, staging):
            raise BadModel(
                f"registered model '{name}' has no files under {model.storage_prefix} in storage; "
                f"train it again (job {model.job_id} made it)"
            )
        try:
            staging.rename(folder)
        except OSError:
            if not folder.is_dir():  # not another process that fetched the same version first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
