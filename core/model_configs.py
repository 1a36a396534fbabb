"""The JSON configs of a model folder, read without torch: what the API knows of a model before a job runs.

A diffusers pipeline folder has `model_index.json` (its class and components),
`scheduler/scheduler_config.json` and `unet/config.json`. Only folders under the
models dir are read; a Hub model not fetched yet, or a
registered model in storage, has no configs here and is checked by the worker instead.
"""

import json
from pathlib import Path
from typing import Any


def read_config(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if it is missing or not a readable JSON object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def scheduler_config(ref: str, models_dir: Path) -> dict[str, Any] | None:
    """The scheduler config of the model folder `ref` under `models_dir` (with its `_class_name`), or None."""
    try:
        folder = (Path(models_dir) / ref).resolve()
        if not folder.is_relative_to(Path(models_dir).resolve()) or not folder.is_dir():
            return None
    except (OSError, ValueError):
        return None
    config = read_config(folder / "scheduler" / "scheduler_config.json")
    if config is None or not isinstance(config.get("_class_name"), str):
        return None
    return config


def steps_problem(model: str, params: Any, models_dir: Path) -> str | None:
    """Why `params` (a job's params: `num_inference_steps`, `scheduler`, maybe `strength`) can't run on
    the local model `model`; None when they can, or when the model's scheduler config isn't here to read."""
    from core.scheduler_limits import steps_problem as limits_problem
    from core.schedulers import SCHEDULERS

    steps = getattr(params, "num_inference_steps", None)
    if steps is None:
        return None
    config = scheduler_config(model, models_dir)
    if config is None:
        return None
    name = getattr(params, "scheduler", None)
    choice = SCHEDULERS.get(name) if name is not None else None
    class_name = choice.class_name if choice is not None else config["_class_name"]
    overrides = choice.overrides if choice is not None else {}
    strength = getattr(params, "strength", None)
    return limits_problem(model, name, class_name, config, overrides, steps, strength)
