"""How many steps a scheduler can run on a model, told from its config alone (numpy, no torch).

A model's scheduler config fixes which timesteps a diffusers scheduler makes for N steps
(`num_train_timesteps`, `timestep_spacing`, `steps_offset`), and some N make timesteps it cannot run:

- DDIM, DDPM and PNDM index `alphas_cumprod` by timestep, so every timestep must be below
  `num_train_timesteps`. SD 1.x configs ("leading" spacing, `steps_offset: 1`) make 1..1000 for 1000
  steps, and the first step fails on `alphas_cumprod[1000]`. DDIM and DDPM also refuse more steps than
  `num_train_timesteps`.
- DPM-Solver, UniPC and LMS divide by the distance between neighbouring noise levels; a repeated
  timestep makes that zero and the latents NaN (a black image from a job that "succeeds"). Multistep
  solvers take N + 1 points over the training timesteps, so they repeat one at N = num_train_timesteps.
- Euler, Euler ancestral and Heun interpolate their noise levels and run any N.

`timesteps` mirrors each class's `set_timesteps` (diffusers 0.42) for the three spacings; the API checks
jobs with `steps_problem` before they are queued, and the worker runs `scheduler_problem` on the
diffusers scheduler itself before the first step, with the same message. tests/core/test_scheduler_limits.py
checks that the two agree with diffusers over the tiny models.
"""

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np

MAX_STEPS = 1000  # the specs' upper bound on num_inference_steps

INDEXED = {"DDIMScheduler", "DDPMScheduler", "PNDMScheduler"}
REFUSES_MORE_THAN_TRAINED = {"DDIMScheduler", "DDPMScheduler"}
MULTISTEP = {"DPMSolverMultistepScheduler", "UniPCMultistepScheduler"}
DIVIDES_BY_STEP = MULTISTEP | {"LMSDiscreteScheduler"}
INTERPOLATING = {"EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler"}
KNOWN = INDEXED | DIVIDES_BY_STEP | INTERPOLATING

# Config keys a saved config may lack, with each class's default.
_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "steps_offset": 0,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "skip_prk_steps": False,
    "use_karras_sigmas": False,
    "lambda_min_clipped": -float("inf"),
}
_LEADING_BY_DEFAULT = INDEXED


def effective_config(
    class_name: str, config: Mapping[str, Any], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The config `class_name.from_config(config, **overrides)` ends up with, for the keys used here."""
    spacing = "leading" if class_name in _LEADING_BY_DEFAULT else "linspace"
    merged = _DEFAULTS | {"timestep_spacing": spacing} | dict(config) | dict(overrides)
    if class_name not in MULTISTEP:
        merged["lambda_min_clipped"] = -float("inf")
    if class_name in {"EulerAncestralDiscreteScheduler", "PNDMScheduler", "DDIMScheduler", "DDPMScheduler"}:
        merged["use_karras_sigmas"] = False
    return merged


def _alphas_cumprod(config: Mapping[str, Any]) -> np.ndarray:
    steps = int(config["num_train_timesteps"])
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float64)
    elif config["beta_schedule"] == "scaled_linear":
        betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, steps) ** 2
    elif config["beta_schedule"] == "squaredcos_cap_v2":
        t = np.arange(steps + 1) / steps
        alpha_bar = np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
        betas = np.minimum(1 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
    else:
        betas = np.linspace(config["beta_start"], config["beta_end"], steps)
    return np.cumprod(1.0 - betas)


def _last_timestep(config: Mapping[str, Any]) -> int:
    """DPM-Solver's upper end: the training timesteps, less those clipped by `lambda_min_clipped`."""
    steps = int(config["num_train_timesteps"])
    if config["lambda_min_clipped"] == -float("inf"):
        return steps
    alphas = _alphas_cumprod(config)
    lambdas = np.log(np.sqrt(alphas)) - np.log(np.sqrt(1 - alphas))
    return steps - int(np.searchsorted(lambdas[::-1], config["lambda_min_clipped"]))


def timesteps(class_name: str, config: Mapping[str, Any], steps: int) -> np.ndarray:
    """The timesteps `class_name` makes for `steps` steps from the effective `config`, in run order."""
    trained = int(config["num_train_timesteps"])
    spacing = config["timestep_spacing"]
    offset = int(config["steps_offset"])
    if class_name in MULTISTEP:
        upper = _last_timestep(config) if class_name == "DPMSolverMultistepScheduler" else trained
        if spacing == "linspace":
            return np.linspace(0, upper - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
        if spacing == "leading":
            ratio = upper // (steps + 1)
            return (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].astype(np.int64) + offset
        ratio = trained / steps
        return np.arange(upper, 0, -ratio).round().astype(np.int64) - 1
    if spacing == "linspace":
        ascending = np.linspace(0, trained - 1, steps).round()
    elif spacing == "leading":
        ascending = (np.arange(0, steps) * (trained // steps)).round() + offset
    elif spacing == "trailing":
        ascending = np.round(np.arange(trained, 0, -trained / steps))[::-1] - 1
    else:
        raise ValueError(f"timestep_spacing {spacing!r} is not one of 'linspace', 'leading', 'trailing'")
    ascending = ascending.astype(np.int64)
    if class_name == "PNDMScheduler":
        if config["skip_prk_steps"]:
            plms = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1]
            return plms
        prk = np.array(ascending[-4:]).repeat(2) + np.tile(np.array([0, trained // steps // 2]), 4)
        return np.concatenate([prk[:-1].repeat(2)[1:-1][::-1], ascending[:-3][::-1]]).astype(np.int64)
    descending = ascending[::-1]
    if class_name == "HeunDiscreteScheduler":  # each step but the first evaluates its timestep twice
        return np.concatenate([descending[:1], descending[1:].repeat(2)])
    return descending


def run_start(steps: int, strength: float | None, order: int = 1) -> int:
    """Where an image-to-image run starts in the timesteps, as the SD pipelines' `get_timesteps`."""
    if strength is None:
        return 0
    init = min(int(steps * strength), steps)
    return max(steps - init, 0) * order


def _runs(class_name: str, config: Mapping[str, Any], steps: int, strength: float | None) -> bool:
    if class_name in REFUSES_MORE_THAN_TRAINED and steps > config["num_train_timesteps"]:
        return False
    try:
        ts = timesteps(class_name, config, steps)
    except ValueError:
        return False
    order = 2 if class_name == "HeunDiscreteScheduler" else 1
    return timesteps_run(class_name, config, ts[run_start(steps, strength, order) :])


def timesteps_run(class_name: str, config: Mapping[str, Any], ts: np.ndarray) -> bool:
    """Whether a scheduler of `class_name` can step through `ts`, the timesteps of a run."""
    if len(ts) == 0:
        return False
    if class_name in INDEXED and (ts.max() >= config["num_train_timesteps"] or ts.min() < 0):
        return False
    if class_name in DIVIDES_BY_STEP and not config["use_karras_sigmas"]:
        # Noise levels are interpolated over 0..num_train_timesteps - 1, which clamps timesteps beyond it.
        levels = np.clip(np.asarray(ts, dtype=np.float64), 0, config["num_train_timesteps"] - 1)
        return bool(np.all(np.diff(levels) != 0))
    return True


@lru_cache(maxsize=1024)
def _max_steps(class_name: str, config_items: tuple[tuple[str, Any], ...], strength: float | None) -> int:
    config = dict(config_items)
    for steps in range(MAX_STEPS, 0, -1):
        if _runs(class_name, config, steps, strength):
            return steps
    return 0


def max_steps(class_name: str, config: Mapping[str, Any], strength: float | None = None) -> int | None:
    """The most steps (up to 1000) a `class_name` scheduler with the effective `config` can run; None
    for a class this module does not know."""
    if class_name not in KNOWN:
        return None
    items = tuple(sorted((k, _hashable(v)) for k, v in config.items() if k in _KEYS))
    return _max_steps(class_name, items, strength)


_KEYS = set(_DEFAULTS) | {"timestep_spacing", "trained_betas"}


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def steps_message(model: str, scheduler: str | None, limit: int) -> str:
    whose = f"{model}'s scheduler" if scheduler is None else f"scheduler '{scheduler}' on {model}"
    if limit == 0:
        return f"{whose} can run no number of steps; pick another scheduler"
    return f"{whose} allows at most {limit} steps"


def steps_problem(
    model: str,
    scheduler: str | None,
    class_name: str,
    config: Mapping[str, Any],
    overrides: Mapping[str, Any],
    steps: int,
    strength: float | None = None,
) -> str | None:
    """Why `steps` steps (at `strength`, for image-to-image) can't run with `scheduler` (None: the
    model's own, `class_name` from `config`) on `model`; None when they can or when the class is unknown."""
    if class_name not in KNOWN:
        return None
    effective = effective_config(class_name, config, overrides)
    limit = max_steps(class_name, effective, strength)
    if limit is None or _runs(class_name, effective, steps, strength):
        return None
    return steps_message(model, scheduler, limit) + f", got num_inference_steps={steps}"


def scheduler_problem(
    model: str, name: str | None, scheduler: Any, steps: int, strength: float | None = None
) -> str | None:
    """The same check on a diffusers scheduler object, from the timesteps it makes itself; for workers.

    Calls `scheduler.set_timesteps(steps)`; an exception from it is a problem too.
    """
    class_name = type(scheduler).__name__
    config = dict(scheduler.config)
    try:
        scheduler.set_timesteps(steps)
        ts = scheduler.timesteps.cpu().numpy()
    except Exception as error:  # noqa: BLE001 - any failure to set up is the job's input
        made = None
        reason = f"{type(error).__name__}: {error}"
    else:
        made = ts
        reason = ""
    effective = effective_config(class_name, config, {})
    runs = made is not None and (
        class_name not in KNOWN
        or timesteps_run(class_name, effective, made[run_start(steps, strength, scheduler.order) :])
    )
    if runs:
        return None
    limit = max_steps(class_name, effective, strength)
    if limit is None:
        return f"scheduler {name or class_name!r} on {model} can't run {steps} steps: {reason}"
    return steps_message(model, name, limit) + f", got num_inference_steps={steps}"
