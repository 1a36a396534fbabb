"""Turning a validated job spec into a job row, and the checks beyond its schema: the deployment's
limits, and those that need the database or storage.

The API runs these checks before it accepts a job or a schedule; the beat builds the jobs of due
schedules with `job_from_spec` too, so a job is the same however it was submitted. The checks only
read, on the caller's session.
"""

import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import Settings
from core.dataset_refs import dataset_problem, parse_dataset
from core.model_refs import reference_problem
from core.model_registry import find_model
from core.specs import JobSpec, Params, new_seed
from core.storage import Storage
from core.tables import Job, JobStatus, ModelKind

# (location in the body, message, error type), as FastAPI reports validation errors.
Problem = tuple[tuple[str, ...], str, str]


def limit_problems(params: Params, settings: Settings) -> list[Problem]:
    """The limits this deployment sets on what a job makes (`DIFFQ_MAX_NUM_IMAGES`, `DIFFQ_MAX_PIXELS`).

    They are checked when a job is admitted, not by the params models: a worker reads a job it was given
    whatever its own settings say, so a worker whose limits differ from the API's still runs it.
    """
    problems: list[Problem] = []
    num_images = getattr(params, "num_images", None)
    if num_images is not None and num_images > settings.max_num_images:
        message = f"num_images must be at most {settings.max_num_images}, got {num_images}"
        problems.append((("params", "num_images"), message, "value_error"))
    width, height = getattr(params, "width", None), getattr(params, "height", None)
    if width and height and width * height > settings.max_pixels:
        message = f"width*height is {width * height} pixels; the limit is {settings.max_pixels}"
        problems.append((("params",), message, "value_error"))
    return problems


def training_problems(session: Session, spec: JobSpec, models_dir: Path, storage: Storage) -> list[Problem]:
    """The checks beyond the model: a LoRA to apply, the name a training job registers, its dataset."""
    problems: list[Problem] = []
    lora = getattr(spec.params, "lora", None)
    if lora is not None and (problem := lora_problem(session, lora.name)):
        problems.append((("params", "lora", "name"), problem, "unknown_model"))
    output_model = getattr(spec, "output_model", None)
    if output_model is not None and (
        problem := output_model_problem(session, output_model, spec.overwrite_output_model, models_dir)
    ):
        problems.append((("output_model",), problem, "model_exists"))
    dataset = getattr(spec.params, "dataset", None)
    if dataset is not None and (problem := dataset_problem(parse_dataset(dataset), storage)):
        problems.append((("params", "dataset"), problem, "bad_dataset"))
    return problems


def model_problem(session: Session, ref: str, job_type: str, models_dir: Path) -> str | None:
    """Why `ref` can't be the model of a `job_type` job; None if it can."""
    try:
        local = (models_dir / ref).exists()
    except (OSError, ValueError):  # a name the OS refuses (too long, a NUL byte) is no folder nor registered
        return reference_problem(ref, models_dir)
    registered = find_model(session, ref) if not local else None
    if registered is None:
        return reference_problem(ref, models_dir)
    if registered.kind == ModelKind.LORA:
        return (
            f"model '{ref}' is a LoRA; name its base model '{registered.base_model}' as the model and "
            f'pass params.lora = {{"name": "{ref}"}}'
        )
    if registered.kind == ModelKind.UNCONDITIONAL and job_type != "unconditional":
        return f"model '{ref}' is an unconditional model (UNet2DModel); use it in an 'unconditional' job"
    return None


def lora_problem(session: Session, name: str) -> str | None:
    registered = find_model(session, name)
    if registered is None:
        return (
            f"no registered LoRA named '{name}'; train one with a 'train_lora' job "
            "(GET /v1/models lists them)"
        )
    if registered.kind != ModelKind.LORA:
        return f"model '{name}' is not a LoRA but a {registered.kind} model"
    return None


def output_model_problem(session: Session, name: str, overwrite: bool, models_dir: Path) -> str | None:
    """Why a training job may not register `name`; None if it may."""
    if (models_dir / name).exists():
        return f"'{name}' is a folder in the models dir; pick another output_model"
    if overwrite:
        return None
    registered = find_model(session, name)
    if registered is not None:
        return (
            f"a model named '{name}' is already registered (made by job {registered.job_id}); pick another "
            "output_model, or set overwrite_output_model: true to replace it"
        )
    training = session.scalar(
        select(Job.id).where(Job.output_model == name, Job.status.in_(JobStatus.ACTIVE))
    )
    if training is not None:
        return (
            f"job {training} is already training a model named '{name}'; pick another output_model, "
            "or set overwrite_output_model: true"
        )
    return None


def job_fields(spec: JobSpec) -> dict[str, Any]:
    """The columns to store for `spec`; a seed left unset is picked here and recorded, so the job
    can be remade."""
    params: dict[str, Any] = spec.params.model_dump(mode="json")
    if "seed" in params and params["seed"] is None:
        params["seed"] = new_seed(params.get("num_images", 1))
    return {
        "type": spec.type,
        "model": spec.model,
        "params": params,
        "output_model": getattr(spec, "output_model", None),
        "overwrite_output_model": getattr(spec, "overwrite_output_model", False),
    }


def job_from_spec(
    spec: JobSpec, schedule_id: uuid.UUID | None = None, scheduled_for: datetime | None = None
) -> Job:
    """A queued job for `spec`."""
    return Job(
        **job_fields(spec), status=JobStatus.QUEUED, schedule_id=schedule_id, scheduled_for=scheduled_for
    )
