"""The job types diffq runs, each declared once.

A job type is an entry of `JOB_TYPES`: its name, the spec a user submits and the params model inside it
(core/specs.py), the queue it goes to, the module of its runner (a `run(job)` function, resolved by the
workers; core never imports them) and, for generation, the diffusers class that loads its pipeline.
Everything else that lists job types (the `JobSpec` union, the training queue, the workers' runners,
the model store's tasks) is derived from here or checked against it at import.
"""

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, get_args

from pydantic import BaseModel

from core.config import get_settings
from core.specs import (
    Depth2ImgJob,
    Depth2ImgParams,
    Img2ImgJob,
    Img2ImgParams,
    InpaintJob,
    InpaintParams,
    JobSpec,
    Params,
    Text2ImgJob,
    Text2ImgParams,
    TrainLoraJob,
    TrainLoraParams,
    TrainUnconditionalJob,
    TrainUnconditionalParams,
    UnconditionalJob,
    UnconditionalParams,
)


class JobType(StrEnum):
    TEXT2IMG = "text2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    DEPTH2IMG = "depth2img"
    UNCONDITIONAL = "unconditional"
    TRAIN_UNCONDITIONAL = "train_unconditional"
    TRAIN_LORA = "train_lora"


class QueueKind(StrEnum):
    """Generation jobs go to `DIFFQ_QUEUE`, training jobs to `DIFFQ_TRAIN_QUEUE` (core/scheduling.py)."""

    GENERATION = "generation"
    TRAINING = "training"


@dataclass(frozen=True)
class JobTypeEntry:
    name: JobType
    spec: type[BaseModel]
    params: type[Params]
    queue: QueueKind
    # The module whose `run(job: JobRun)` runs the job, imported by workers/runners/__init__.py.
    runner: str
    # The diffusers class whose `from_pretrained` loads the job's pipeline; None for training.
    pipeline: str | None = None


JOB_TYPES: dict[JobType, JobTypeEntry] = {
    entry.name: entry
    for entry in (
        JobTypeEntry(
            JobType.TEXT2IMG,
            Text2ImgJob,
            Text2ImgParams,
            QueueKind.GENERATION,
            "workers.runners.text2img",
            "AutoPipelineForText2Image",
        ),
        JobTypeEntry(
            JobType.IMG2IMG,
            Img2ImgJob,
            Img2ImgParams,
            QueueKind.GENERATION,
            "workers.runners.img2img",
            "AutoPipelineForImage2Image",
        ),
        JobTypeEntry(
            JobType.INPAINT,
            InpaintJob,
            InpaintParams,
            QueueKind.GENERATION,
            "workers.runners.inpaint",
            "AutoPipelineForInpainting",
        ),
        JobTypeEntry(
            JobType.DEPTH2IMG,
            Depth2ImgJob,
            Depth2ImgParams,
            QueueKind.GENERATION,
            "workers.runners.depth2img",
            "StableDiffusionDepth2ImgPipeline",
        ),
        JobTypeEntry(
            JobType.UNCONDITIONAL,
            UnconditionalJob,
            UnconditionalParams,
            QueueKind.GENERATION,
            "workers.runners.unconditional",
            # Whatever pipeline model_index.json names; the runner drives its UNet and scheduler.
            "DiffusionPipeline",
        ),
        JobTypeEntry(
            JobType.TRAIN_UNCONDITIONAL,
            TrainUnconditionalJob,
            TrainUnconditionalParams,
            QueueKind.TRAINING,
            "workers.runners.train_unconditional",
        ),
        JobTypeEntry(
            JobType.TRAIN_LORA,
            TrainLoraJob,
            TrainLoraParams,
            QueueKind.TRAINING,
            "workers.runners.train_lora",
        ),
    )
}

TRAINING_TYPES: frozenset[str] = frozenset(
    name for name, entry in JOB_TYPES.items() if entry.queue == QueueKind.TRAINING
)


def queue_for(name: str) -> str:
    """The queue a job of type `name` waits in unless it names one: `DIFFQ_TRAIN_QUEUE` for training,
    `DIFFQ_QUEUE` for the rest."""
    settings = get_settings()
    return settings.train_queue if name in TRAINING_TYPES else settings.queue


def job_type(name: str) -> JobTypeEntry:
    """The entry of job type `name`; ValueError naming the known types if there is none."""
    try:
        return JOB_TYPES[JobType(name)]
    except ValueError:
        known = ", ".join(f"'{known}'" for known in JOB_TYPES)
        raise ValueError(f"unknown job type '{name}'; expected one of {known}") from None


def parse_params(name: str, params: dict[str, Any] | Params) -> Params:
    """A stored job's params, typed by its job type's params model (pydantic's ValidationError if they
    do not fit it). Only the schema applies: the limits of `DIFFQ_MAX_*` are the API's, at admission."""
    return job_type(name).params.model_validate(params)


def _check_specs_match_registry() -> None:
    """`JobSpec` (core/specs.py) must list exactly the registered specs, each under its own name."""
    union = set(get_args(get_args(JobSpec)[0]))
    registered = {entry.spec for entry in JOB_TYPES.values()}
    if union != registered:
        names = sorted(spec.__name__ for spec in union ^ registered)
        raise TypeError(f"JobSpec and core/job_types.py's JOB_TYPES disagree on {', '.join(names)}")
    for name, entry in JOB_TYPES.items():
        if get_args(entry.spec.model_fields["type"].annotation) != (name.value,):
            raise TypeError(f"{entry.spec.__name__}.type must be Literal['{name}']")
        if entry.spec.model_fields["params"].annotation is not entry.params:
            raise TypeError(f"{entry.spec.__name__}.params must be {entry.params.__name__}")


_check_specs_match_registry()
