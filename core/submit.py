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
from core.dataset_refs import DatasetRef, dataset_problem, parse_dataset
from core.fusion import fuse_key
from core.images import MIN_SIZE
from core.job_types import queue_for
from core.memo import Memo
from core.model_configs import kind_problem, scheduler_config
from core.model_refs import reference_problem
from core.model_registry import find_model
from core.scheduler_limits import steps_problem as scheduler_steps_problem
from core.specs import JobSpec, Params, TrainLoraParams, TrainUnconditionalParams, field_value, new_seed
from core.storage import Storage
from core.tables import Job, JobStatus, ModelKind, Upload

# (location in the body, message, error type), as FastAPI reports validation errors.
Problem = tuple[tuple[str, ...], str, str]


def limit_problems(params: Params, settings: Settings, native: int | None = None) -> list[Problem]:
    """The limits this deployment sets on what a job makes (`DIFFQ_MAX_NUM_IMAGES`, `DIFFQ_MAX_PIXELS`).

    The pixels counted are the output's: a `width` or `height` left unset is `native` (the side of the
    model's own images, core/model_configs.py `native_size`, for text2img), so `{"width": 100000}` alone is
    refused too. When the unset side isn't known here (no `native`: the model's configs aren't readable,
    or it is an inpaint's input image, checked with the image in core/uploads.py), the side that is set is
    counted times `MIN_SIZE` (16), the smallest the other side can be: what this refuses surely exceeds
    the limit, whatever the other side turns out to be.

    They are checked when a job is admitted, not by the params models: a worker reads a job it was given
    whatever its own settings say, so a worker whose limits differ from the API's still runs it.
    """
    problems: list[Problem] = []
    num_images = field_value(params, "num_images")
    if num_images is not None and num_images > settings.max_num_images:
        message = f"num_images must be at most {settings.max_num_images}, got {num_images}"
        problems.append((("params", "num_images"), message, "value_error"))
    width, height = field_value(params, "width"), field_value(params, "height")
    if width and height and width * height > settings.max_pixels:
        message = f"width*height is {width * height} pixels; the limit is {settings.max_pixels}"
        problems.append((("params",), message, "value_error"))
    elif bool(width) != bool(height):
        side, field, other = (width, "width", "height") if width else (height, "height", "width")
        least = native or MIN_SIZE
        if side * least > settings.max_pixels:
            what = f"the model's {native}" if native else f"at least {MIN_SIZE}"
            message = (
                f"{field} {side} with {other} unset ({what}) makes over {side * least} pixels; the limit is "
                f"{settings.max_pixels} (DIFFQ_MAX_PIXELS): lower {field}, or give both sides"
            )
            problems.append((("params", field), message, "value_error"))
    return problems


def training_problems(
    session: Session,
    spec: JobSpec,
    models_dir: Path,
    storage: Storage,
    owner: str | None = None,
    memo: Memo | None = None,
) -> list[Problem]:
    """The checks beyond the model: a LoRA to apply, the name a training job registers, its dataset, and
    the sampling steps a training job's scheduler can't run. `owner` sees its own and published
    registered models (None: every model). `memo` (one per request) answers each LoRA, name, dataset and
    scheduler config once for all the jobs of a batch."""
    memo = memo if memo is not None else Memo()
    problems: list[Problem] = []
    lora = field_value(spec.params, "lora")
    model = spec.model
    if lora is not None and model is not None:
        name = lora.name
        if problem := memo.get(("lora", name, model), lambda: lora_problem(session, name, model, owner)):
            problems.append((("params", "lora", "name"), *problem))
    output_model = field_value(spec, "output_model")
    if output_model is not None:
        overwrite = spec.overwrite_output_model
        if problem := memo.get(
            ("output_model", output_model, overwrite),
            lambda: output_model_problem(session, output_model, overwrite, models_dir, owner),
        ):
            problems.append((("output_model",), problem, "model_exists"))
    dataset = field_value(spec.params, "dataset")
    if dataset is not None and (
        problem := memo.get(
            ("dataset", dataset),
            lambda: (
                upload_kind_problem(session, parse_dataset(dataset))
                or dataset_problem(parse_dataset(dataset), storage)
            ),
        )
    ):
        problems.append((("params", "dataset"), problem, "bad_dataset"))
    problems.extend(training_steps_problems(spec, models_dir, memo))
    return problems


def upload_kind_problem(session: Session, ref: DatasetRef) -> str | None:
    """Why the upload a `dataset` names is not a dataset zip (it is an image); None otherwise."""
    if ref.kind != "upload":
        return None
    kind = session.scalar(select(Upload.kind).where(Upload.id == ref.name))
    if kind is None or kind == "zip":
        return None
    return (
        f"upload {ref.name} is an {kind}, not a dataset; zip the folder of training images and upload the "
        "zip with POST /v1/uploads"
    )


def training_steps_problems(spec: JobSpec, models_dir: Path, memo: Memo | None = None) -> list[Problem]:
    """Sampling steps a training job's scheduler can't run: `train_unconditional`'s sample grids (a
    `DDPMScheduler` of the job's own `num_train_timesteps`), `train_lora`'s validation images (the base
    model's scheduler, when its config is here to read; read once per model with `memo`)."""
    params = spec.params
    if isinstance(params, TrainUnconditionalParams):
        config = {"num_train_timesteps": params.num_train_timesteps, "beta_schedule": params.beta_schedule}
        steps = params.sample_inference_steps
        if scheduler_steps_problem("the sample grids", None, "DDPMScheduler", config, {}, steps) is not None:
            message = (
                f"sample_inference_steps ({steps}) must be at most num_train_timesteps "
                f"({params.num_train_timesteps}): a DDPM scheduler runs at most as many steps as it trained"
            )
            return [(("params", "sample_inference_steps"), message, "too_many_steps")]
    if isinstance(params, TrainLoraParams) and params.validation_prompt and spec.model is not None:
        model = spec.model
        memo = memo if memo is not None else Memo()
        config = memo.get(("scheduler_config", model), lambda: scheduler_config(model, models_dir))
        steps = params.validation_inference_steps
        if config is not None and (
            problem := scheduler_steps_problem(model, None, config["_class_name"], config, {}, steps)
        ):
            message = problem.replace("num_inference_steps", "validation_inference_steps")
            return [(("params", "validation_inference_steps"), message, "too_many_steps")]
    return []


def model_problem(
    session: Session, ref: str, job_type: str, models_dir: Path, owner: str | None = None
) -> tuple[str, str] | None:
    """Why `ref` can't be the model of a `job_type` job, with the error type; None if it can.

    A local folder is checked against the job type by its configs (core/model_configs.py `kind_problem`,
    the rule the worker applies to the pipeline it loads), a registered model by its kind. A registered
    model `owner` may not use (core/model_registry.py `visible_to`) is as unknown as one that isn't there.
    """
    try:
        local = (models_dir / ref).exists()
    except (OSError, ValueError):  # a name the OS refuses (too long, a NUL byte) is no folder nor registered
        problem = reference_problem(ref, models_dir)
        return (problem, "unknown_model") if problem else None
    registered = find_model(session, ref, owner) if not local else None
    if registered is None:
        if problem := reference_problem(ref, models_dir):
            return problem, "unknown_model"
        if local and (problem := kind_problem(ref, job_type, models_dir)):
            return problem, "wrong_model_kind"
        return None
    if registered.kind == ModelKind.LORA:
        return (
            f"model '{ref}' is a LoRA; name its base model '{registered.base_model}' as the model and "
            f'pass params.lora = {{"name": "{ref}"}}',
            "wrong_model_kind",
        )
    if registered.kind == ModelKind.UNCONDITIONAL and job_type != "unconditional":
        return (
            f"model '{ref}' is an unconditional model (UNet2DModel); use it in an 'unconditional' job",
            "wrong_model_kind",
        )
    return None


def lora_problem(session: Session, name: str, model: str, owner: str | None = None) -> tuple[str, str] | None:
    """Why the LoRA `name` can't be applied to `model`, with the error type; None if it can."""
    registered = find_model(session, name, owner)
    if registered is None:
        return (
            f"no registered LoRA named '{name}'; train one with a 'train_lora' job "
            "(GET /v1/models lists them)",
            "unknown_model",
        )
    if registered.kind != ModelKind.LORA:
        return f"model '{name}' is not a LoRA but a {registered.kind} model", "wrong_model_kind"
    if registered.base_model is not None and registered.base_model != model:
        return (
            f"LoRA '{name}' was trained on '{registered.base_model}'; use it with that model, not '{model}'",
            "wrong_base_model",
        )
    return None


def output_model_problem(
    session: Session, name: str, overwrite: bool, models_dir: Path, owner: str | None = None
) -> str | None:
    """Why a training job of `owner` may not register `name`; None if it may. Names are one namespace
    for all owners; nobody replaces another owner's model."""
    if (models_dir / name).exists():
        return f"'{name}' is a folder in the models dir; pick another output_model"
    registered = find_model(session, name)
    if registered is not None and owner is not None and registered.owner != owner:
        return f"the model name '{name}' is taken by another owner; pick another output_model"
    if overwrite:
        return None
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


def job_fields(spec: JobSpec, priority: int = 0, memo: Memo | None = None) -> dict[str, Any]:
    """The columns to store for `spec`; a seed left unset is picked here and recorded, so the job
    can be remade. A spec without a priority takes `priority` (its batch's). `memo` (one per request)
    digests each fusion key once for a batch's jobs."""
    params: dict[str, Any] = spec.params.model_dump(mode="json")
    if "seed" in params and params["seed"] is None:
        params["seed"] = new_seed(params.get("num_images", 1))
    return {
        "type": spec.type,
        "model": spec.model,
        "params": params,
        "fuse_key": fuse_key(spec.type, spec.model, params, memo),
        "output_model": field_value(spec, "output_model"),
        "overwrite_output_model": field_value(spec, "overwrite_output_model") or False,
        "webhook": spec.webhook.model_dump(mode="json") if spec.webhook is not None else None,
        "queue": queue_for(spec.type),
        "priority": spec.priority if spec.priority is not None else priority,
    }


def job_from_spec(
    spec: JobSpec,
    owner: str,
    schedule_id: uuid.UUID | None = None,
    scheduled_for: datetime | None = None,
) -> Job:
    """A queued job of `owner` for `spec`."""
    return Job(
        **job_fields(spec),
        owner=owner,
        status=JobStatus.QUEUED,
        schedule_id=schedule_id,
        scheduled_for=scheduled_for,
    )
