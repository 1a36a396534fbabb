"""What a model reference may look like: a folder under the models dir, or a Hub repo id.

The API checks references here before a job is accepted; the workers' model store resolves them.
"""

import re
from pathlib import Path

from core.paths import PathEscapeError, safe_join

HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def reference_problem(ref: str, models_dir: Path) -> str | None:
    """Why `ref` can't name a model, or None when it can."""
    if not ref or ref.startswith(("/", "\\", "~")) or ".." in Path(ref).parts:
        return f"model reference '{ref}' must be a name under the models dir or a Hub repo id 'org/name'"
    try:
        local = safe_join(models_dir, ref)
        if (local / "model_index.json").is_file() or (local / "config.json").is_file():
            return None
    except PathEscapeError:
        return f"model reference '{ref}' escapes the models dir"
    except (OSError, ValueError) as error:  # names the OS refuses: too long, a NUL byte
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        return f"model reference '{ref[:100]}' is not a folder name or a Hub repo id: {reason}"
    if "/" in ref and HUB_REPO_ID.match(ref):
        return None
    return (
        f"model '{ref}' not found in the models dir; pass the name of a folder there "
        "(try `diffq models make-tiny`) or a Hub repo id 'org/name'"
    )
