"""The API's step limits (core/scheduler_limits.py, numpy from JSON configs) agree with diffusers' own
scheduler classes over the tiny models, every scheduler name and a grid of step counts.

"diffusers runs it" is decided by diffusers alone: `set_timesteps` succeeds, and real `step()` calls on
random latents stay finite, from the first step and from each of the first places the scheduler repeats a
timestep (where a multistep solver divides by a zero step). A full run of every cell would take minutes.
"""

import inspect
from pathlib import Path

import diffusers
import pytest
import torch

from core.model_configs import scheduler_config
from core.scheduler_limits import steps_problem
from core.schedulers import SCHEDULERS
from models_store.tiny import TINY_MODELS

# Few enough for the fast tier (set_timesteps of Karras sigmas alone takes ~0.1 s at 1000 steps); the
# limits of the tiny models' configs are at 999 and 1000.
STEPS = [*range(1, 21), 50, 100, 250, 500, 900, 997, 998, 999, 1000]
WINDOW = 4  # steps run from each start: a second-order solver divides by the previous step's size


def _starts(scheduler: object, timesteps: torch.Tensor) -> list[int]:
    """The first step, and just before the first two repeated timesteps (aligned to the solver's order)."""
    order = scheduler.order
    if order > 1:  # Heun evaluates each timestep twice by design; it never divides by their distance
        return [0]
    levels = getattr(scheduler, "sigmas", None)
    levels = timesteps if levels is None else levels[: len(timesteps)]
    repeats = (levels[1:] == levels[:-1]).nonzero().flatten().tolist()
    return sorted({0, *(max(i - 1, 0) for i in repeats[:2])})


def diffusers_runs(make: object, steps: int) -> bool:
    scheduler = make()
    try:
        scheduler.set_timesteps(steps)
    except Exception:  # noqa: BLE001 - any refusal counts as "can't run"
        return False
    generator = torch.Generator().manual_seed(0)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    for start in _starts(scheduler, scheduler.timesteps):
        if start:
            scheduler = make()
            scheduler.set_timesteps(steps)
        if start and hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        sample = torch.randn(1, 1, 2, 2, generator=generator) * scheduler.init_noise_sigma
        kwargs = {"generator": generator} if takes_generator else {}
        try:
            for t in scheduler.timesteps[start : start + WINDOW]:
                model_input = scheduler.scale_model_input(sample, t)
                output = 0.1 * torch.randn(model_input.shape, generator=generator)
                sample = scheduler.step(output, t, sample, **kwargs).prev_sample
        except Exception:  # noqa: BLE001 - an IndexError on alphas_cumprod, say
            return False
        if not torch.isfinite(sample).all():
            return False
    return True


@pytest.mark.parametrize("model", TINY_MODELS)
def test_limits_agree_with_diffusers(models_dir: Path, model: str) -> None:
    config = scheduler_config(model, models_dir)
    assert config is not None
    own = getattr(diffusers, config["_class_name"])
    disagreements = []
    cells = 0
    for name in [None, *SCHEDULERS]:
        choice = SCHEDULERS.get(name) if name else None
        cls = getattr(diffusers, choice.class_name) if choice else own
        overrides = choice.overrides if choice else {}
        prototype = cls.from_config(config, **overrides)

        def make(prototype: object = prototype) -> object:
            return type(prototype).from_config(prototype.config)

        for steps in STEPS:
            cells += 1
            api_accepts = steps_problem(model, name, cls.__name__, config, overrides, steps) is None
            if api_accepts != diffusers_runs(make, steps):
                disagreements.append((name, steps, api_accepts))
    print(f"{model}: {cells} cells, {len(disagreements)} disagreements")
    assert cells == (1 + len(SCHEDULERS)) * len(STEPS)
    assert disagreements == []


@pytest.mark.parametrize(
    ("model", "scheduler"),
    [
        ("tiny-sd", None),
        ("tiny-sd", "ddim"),
        ("tiny-sd", "ddpm"),
        ("tiny-ddpm", "dpmpp_2m"),
        ("tiny-ddpm", "unipc"),
    ],
)
def test_replayed_limits(models_dir: Path, model: str, scheduler: str | None) -> None:
    config = scheduler_config(model, models_dir)
    assert config is not None
    choice = SCHEDULERS.get(scheduler) if scheduler else None
    class_name = choice.class_name if choice else config["_class_name"]
    overrides = choice.overrides if choice else {}
    problem = steps_problem(model, scheduler, class_name, config, overrides, 1000)
    whose = f"{model}'s scheduler" if scheduler is None else f"scheduler '{scheduler}' on {model}"
    assert problem == f"{whose} allows at most 999 steps, got num_inference_steps=1000"
    assert steps_problem(model, scheduler, class_name, config, overrides, 999) is None
