"""What a model reference may look like: a folder under the models dir, or a Hub repo id.

The API checks references here before a job is accepted; the workers' model store resolves them, and
both read Hub repo ids with `hub_repo_id_problem`, so that what the API accepts the workers can fetch.
Neither accepts a reference that names a hidden folder (`hidden_part_problem`): the models dir's dot
folders are diffq's own, such as the workers' cache of registered models (`.registry/<name>/<job id>`),
which is reached by a registered model's name only, after its owner is checked.
"""

from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from core.paths import PathEscapeError, safe_join


def hub_repo_id_problem(ref: str) -> str | None:
    """Why `ref` is not a Hub repo id `org/name`, as `huggingface_hub` checks them; None if it is one."""
    if ref.count("/") != 1:
        return f"'{ref}' is not of the form 'org/name'"
    try:
        validate_repo_id(ref)
    except HFValidationError as error:
        return str(error)
    return None


def is_diffusers_folder(folder: Path) -> bool:
    """Whether `folder` holds a diffusers pipeline (`model_index.json`) or a single model (`config.json`)."""
    return (folder / "model_index.json").is_file() or (folder / "config.json").is_file()


def hidden_part_problem(ref: str, local: Path, models_dir: Path) -> str | None:
    """Why `ref`, found at `local` (its path under `models_dir`, symlinks followed), names a hidden
    folder or file (a part starting with '.'), as written or once resolved; None if it names none."""
    resolved_parts = local.relative_to(Path(models_dir).resolve()).parts if local.is_absolute() else ()
    if any(part.startswith(".") for part in (*Path(ref).parts, *resolved_parts)):
        return (
            f"model reference '{ref[:100]}' names a hidden folder of the models dir; give a registered "
            "model's name (GET /v1/models), a folder in the models dir or a Hub repo id 'org/name'"
        )
    return None


def reference_problem(ref: str, models_dir: Path) -> str | None:
    """Why `ref` can't name a model, or None when it can."""
    if not ref or ref.startswith(("/", "\\", "~")) or ".." in Path(ref).parts:
        return f"model reference '{ref}' must be a name under the models dir or a Hub repo id 'org/name'"
    try:
        local = safe_join(models_dir, ref)
        if problem := hidden_part_problem(ref, local, models_dir):
            return problem
        if is_diffusers_folder(local):
            return None
    except PathEscapeError:
        return f"model reference '{ref}' escapes the models dir"
    except (OSError, ValueError) as error:  # names the OS refuses: too long, a NUL byte
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return f"model reference '{ref[:100]}' is not a folder name or a Hub repo id: {reason}"
    if "/" not in ref:
        return (
            f"model '{ref}' not found in the models dir; pass the name of a folder there "
            "(try `diffq models make-tiny`) or a Hub repo id 'org/name'"
        )
    if problem := hub_repo_id_problem(ref):
        return f"model '{ref}' is not a folder in the models dir nor a valid Hub repo id: {problem}"
    return None
