"""Turn a job's model reference into a local diffusers folder: under the models dir, or a Hub download.

A reference comes from a user, so it is treated as untrusted: it may not name a path outside the models dir,
and only safetensors weights are accepted, because pickle weights (`.bin`, `.ckpt`, ...) can run code when
loaded. This module imports neither torch nor diffusers.
"""

import json
from pathlib import Path

from core.errors import BadModel, first_line
from core.model_refs import hidden_part_problem, hub_repo_id_problem, is_diffusers_folder
from core.paths import PathEscapeError, safe_join

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")

# Never downloaded, even where a pattern below would match: weights in formats diffq does not load.
_IGNORE_PATTERNS = ["*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.h5", "*.onnx", "*.onnx_data"]

# Per folder: configs, tokenizer files and the weights diffusers and transformers load by default. Variant
# files (`*.fp16.safetensors`, `*.non_ema.safetensors`) and single-file checkpoints at a repo's root are left
# out: `load_pipeline` reads neither, and they would multiply the download.
_FILE_PATTERNS = (
    "*.json",
    "*.txt",
    "*.model",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model-*.safetensors",
    "model.safetensors",
    "model-*.safetensors",
)


def resolve_model(ref: str, models_dir: Path) -> Path:
    """Return the local diffusers folder that `ref` names, downloading it from the Hub if need be.

    `ref` is first looked up as a folder under `models_dir` (`"tiny-sd"`, `"team/foo"`); failing that, an
    `org/name` reference is fetched from the Hub into its cache (`HF_HOME`), which honours `HF_ENDPOINT`,
    `HF_TOKEN` and `HF_HUB_OFFLINE`. Raises `BadModel` for anything a user has to fix.
    """
    root = Path(models_dir).resolve()
    local = _local_path(ref, root)
    if local.exists():
        if not local.is_dir():
            raise BadModel(f"model {ref!r} is a file, not a folder; give a diffusers folder under {root}")
        _check_layout(ref, local)
        check_safetensors_only(local, ref)
        return local
    # The Hub's own check refuses `..`, so an id can never be read as a path upwards.
    if hub_repo_id_problem(ref) is None:
        folder = _download(ref, root)
        _check_layout(ref, folder)
        check_safetensors_only(folder, ref)
        _check_weights_downloaded(ref, folder, root)
        return folder
    raise BadModel(
        f"model {ref!r} not found in {root}; put a diffusers folder there or give a Hub repo id 'org/name'"
    )


def model_exists(ref: str, models_dir: Path) -> bool:
    """Whether `ref` names a diffusers folder under `models_dir`; no network, never raises `BadModel`.

    Meant for cheap checks before a job is queued: a Hub id that is not downloaded under `models_dir` gives
    False even if `resolve_model` could fetch it.
    """
    root = Path(models_dir).resolve()
    try:
        local = _local_path(ref, root)
    except BadModel:
        return False
    return local.is_dir() and is_diffusers_folder(local)


def check_safetensors_only(folder: Path, ref: str | None = None) -> None:
    """Raise `BadModel` if a component of the model in `folder` has pickle weights and no safetensors.

    For a pipeline, the components are the subfolders that `model_index.json` lists; files elsewhere (a
    single-file checkpoint at the root, say) are never loaded and so are not judged. A component with both
    kinds is accepted, since `load_pipeline` asks for safetensors only.
    """
    folder = Path(folder)
    name = ref if ref is not None else folder.name
    for component in _weight_folders(folder, name):
        files = [p for p in component.iterdir() if p.is_file()] if component.is_dir() else []
        pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
        if pickles and not any(p.suffix == ".safetensors" for p in files):
            where = f"{component.relative_to(folder)}/" if component != folder else "the model folder"
            raise BadModel(
                f"model {name!r} has only pickle weights in {where} ({', '.join(pickles)}); convert it to "
                "safetensors (e.g. load it and call save_pretrained(..., safe_serialization=True))"
            )


def _local_path(ref: str, root: Path) -> Path:
    """`ref` as a path under `root`, refused if it is empty, absolute, leads outside once resolved, or
    names a hidden folder (the registry's cache, `.registry/`, is reached by a model's name only)."""
    if not ref or not ref.strip():
        raise BadModel("model reference is empty; give a folder name under the models dir or a Hub repo id")
    if Path(ref).is_absolute():
        raise BadModel(
            f"model reference {ref!r} is an absolute path; give a folder name relative to {root} "
            "or a Hub repo id 'org/name'"
        )
    try:
        local = safe_join(root, ref)  # follows symlinks and `..`
        local.exists()  # raises here, not later, for names the OS refuses: too long, a NUL byte
    except PathEscapeError:
        raise BadModel(
            f"model reference {ref!r} escapes the models dir; give a folder name under {root} "
            "(symlinks must point inside it too) or a Hub repo id 'org/name'"
        ) from None
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise BadModel(f"model reference {ref[:100]!r} is not a valid path: {reason}") from error
    if problem := hidden_part_problem(ref, local, root):
        raise BadModel(problem)
    return local


def _check_layout(ref: str, folder: Path) -> None:
    if not is_diffusers_folder(folder):
        raise BadModel(
            f"model {ref!r} at {folder} is not in diffusers format (no model_index.json or config.json); "
            "convert it with diffusers' conversion scripts or save it with save_pretrained"
        )


def _weight_folders(folder: Path, name: str) -> list[Path]:
    """The folders that may hold weights: the components of a pipeline, or the folder of a single model."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        return [folder]
    return [folder / component for component in _components(index_file, name)]


def _components(index_file: Path, name: str) -> list[str]:
    """Names of the components a `model_index.json` lists, leaving out the unset ones (`[null, null]`).

    Only identifiers count, as diffusers needs them for attribute names: a key such as `../x` must never
    become a path to look into.
    """
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadModel(f"model {name!r} has an unreadable model_index.json: {error}") from error
    if not isinstance(index, dict):
        raise BadModel(f"model {name!r} has a model_index.json that is not a JSON object")
    return sorted(
        key
        for key, value in index.items()
        if key.isidentifier()
        and not key.startswith("_")
        and isinstance(value, list)
        and len(value) == 2
        and value[1] is not None
    )


def _download(repo_id: str, root: Path) -> Path:
    """Fetch the configs, tokenizer files and safetensors weights of `repo_id`; return its snapshot folder.

    Two steps: the index first, to learn which subfolders are components, then those components' files.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        index_dir = Path(snapshot_download(repo_id, allow_patterns=["model_index.json", "config.json"]))
        if (index_dir / "model_index.json").is_file():
            prefixes = [f"{c}/" for c in _components(index_dir / "model_index.json", repo_id)]
            patterns = ["model_index.json"] + [p + f for p in prefixes for f in _FILE_PATTERNS]
        else:
            patterns = list(_FILE_PATTERNS)
        return Path(snapshot_download(repo_id, allow_patterns=patterns, ignore_patterns=_IGNORE_PATTERNS))
    except GatedRepoError as error:
        raise BadModel(
            f"model {repo_id!r} is gated on the Hub; accept its terms there and set HF_TOKEN for the workers"
        ) from error
    except RepositoryNotFoundError as error:
        raise BadModel(
            f"model {repo_id!r} not found in {root} nor on the Hub; check the name, or set HF_TOKEN "
            "if the repo is private"
        ) from error
    except LocalEntryNotFoundError as error:
        raise BadModel(
            f"model {repo_id!r} is not in the local Hub cache and the Hub cannot be reached (offline or no "
            f"network); download it where the Hub is reachable, or put it under {root}"
        ) from error
    except HfHubHTTPError as error:
        raise BadModel(f"downloading model {repo_id!r} from the Hub failed: {first_line(error)}") from error
    except HFValidationError as error:
        raise BadModel(
            f"model reference {repo_id!r} is not a valid Hub repo id: {first_line(error)}"
        ) from error
    except OSError as error:
        raise BadModel(f"downloading model {repo_id!r} from the Hub failed: {first_line(error)}") from error


def _check_weights_downloaded(ref: str, folder: Path, root: Path) -> None:
    """Refuse a Hub model whose model components came without safetensors: pickle or variant weights only.

    Those files are filtered out of the download, so without this the failure would surface later, in
    `load_pipeline`, as a missing file.
    """
    for component in _weight_folders(folder, ref):
        if (component / "config.json").is_file() and not any(component.glob("*.safetensors")):
            where = f"{component.relative_to(folder)}/" if component != folder else "its root"
            raise BadModel(
                f"model {ref!r} has no safetensors weights in {where} on the Hub (pickle or variant-only "
                f"weights are not loaded); convert it to safetensors and put it under {root}"
            )
