"""The schedulers a job may name, each a diffusers scheduler class and the config it needs.

The API validates names against `SCHEDULERS`; the worker builds the job's own scheduler with
`make_scheduler`, from the config of the model's scheduler (its betas, timestep spacing, prediction
type) with the named class and its overrides, as `Scheduler.from_config(pipe.scheduler.config)` does
in diffusers' docs. Overrides are explicit so that a name means the same thing whichever scheduler the
model came with (e.g. `dpmpp_2m` on a model whose own scheduler is already a Karras DPM-Solver).
"""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SchedulerChoice:
    class_name: str
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


SCHEDULERS: dict[str, SchedulerChoice] = {
    "ddim": SchedulerChoice("DDIMScheduler", {}, "DDIM, deterministic (eta 0)"),
    "ddpm": SchedulerChoice("DDPMScheduler", {}, "DDPM, ancestral sampling; wants many steps"),
    "pndm": SchedulerChoice("PNDMScheduler", {"skip_prk_steps": True}, "PNDM (PLMS), SD 1.x's default"),
    "euler": SchedulerChoice("EulerDiscreteScheduler", {"use_karras_sigmas": False}, "Euler"),
    "euler_a": SchedulerChoice("EulerAncestralDiscreteScheduler", {}, "Euler ancestral, stochastic"),
    "dpmpp_2m": SchedulerChoice(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
        "DPM-Solver++ (2M)",
    ),
    "dpmpp_2m_karras": SchedulerChoice(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        "DPM-Solver++ (2M) with Karras sigmas",
    ),
    "unipc": SchedulerChoice("UniPCMultistepScheduler", {}, "UniPC multistep"),
    "heun": SchedulerChoice("HeunDiscreteScheduler", {}, "Heun, two model calls per step"),
    "lms": SchedulerChoice("LMSDiscreteScheduler", {}, "linear multistep (needs scipy)"),
}


def scheduler_problem(name: str | None) -> str | None:
    """Why `name` is not a scheduler a job may ask for, or None when it is (None means the model's own)."""
    if name is None or name in SCHEDULERS:
        return None
    return f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)} (GET /v1/schedulers)"


def make_scheduler(name: str | None, base: Any) -> Any:
    """A new scheduler of the job's own: `name`'s class from `base`'s config, or a copy of `base` for None.
    Raises `BadInput` if the class can't be built from that config.

    Always a new object, since schedulers keep state between steps and the pipeline they come from is
    shared by every job on the worker.
    """
    import diffusers

    from core.errors import BadInput

    try:
        if name is None:
            return type(base).from_config(base.config)
        choice = SCHEDULERS[name]
        return getattr(diffusers, choice.class_name).from_config(base.config, **choice.overrides)
    except Exception as error:  # a model's config the class can't take is the job's choice, not a bug
        raise BadInput(
            f"scheduler {name or type(base).__name__!r} can't be made from this model's scheduler config: "
            f"{type(error).__name__}: {error}"
        ) from error
