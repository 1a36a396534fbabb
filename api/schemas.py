"""What the API returns."""

import inspect
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from core.batches import BatchState
from core.schedules import as_utc
from core.specs import JOB_SPEC, JobSpec, Priority
from core.storage import Storage
from core.tables import Batch


class JobError(BaseModel):
    code: str
    message: str


class JobOutput(BaseModel):
    """A stored output; its `url` is made from the `storage` and `base_url` in the validation context."""

    key: str
    url: str
    content_type: str
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    # Training outputs: "sample_grid" (with its epoch), "model_snapshot" (epoch), "model" (its name).
    kind: str | None = None
    epoch: int | None = None
    step: int | None = None
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _with_url(cls, output: Any, info: ValidationInfo) -> Any:
        if isinstance(output, dict) and "url" not in output and info.context:
            storage: Storage = info.context["storage"]
            return output | {"url": storage.url(output["key"], base_url=info.context["base_url"])}
        return output


class JobPublic(BaseModel):
    """`JobPublic.model_validate(job, context={"storage": storage, "base_url": base_url})`."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    type: str
    model: str | None
    params: dict[str, Any]
    status: str
    progress: dict[str, Any] | None
    outputs: list[JobOutput]
    error: JobError | None
    attempts: int
    worker: str | None
    device: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    batch_id: uuid.UUID | None = None
    batch_index: int | None = None
    output_model: str | None = None
    overwrite_output_model: bool = False
    schedule_id: uuid.UUID | None = None
    scheduled_for: datetime | None = None

    @field_validator("outputs", mode="before")
    @classmethod
    def _no_outputs(cls, outputs: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
        return outputs or []

    @field_validator("error", mode="before")
    @classmethod
    def _no_error(cls, error: dict[str, str] | None) -> dict[str, str] | None:
        return error or None

    @field_validator("overwrite_output_model", mode="before")
    @classmethod
    def _unset_is_false(cls, value: bool | None) -> bool:
        return bool(value)


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class MetricPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: int
    epoch: int
    loss: float
    lr: float


class MetricsPublic(BaseModel):
    job_id: uuid.UUID
    data: list[MetricPublic]
    count: int


class ModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    kind: str
    base_model: str | None
    storage_prefix: str
    job_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class SchedulePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str | None
    job: dict[str, Any]
    cron: str | None
    timezone: str
    run_at: datetime | None
    enabled: bool
    next_run_at: datetime | None
    last_run_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @field_validator("run_at", "next_run_at", "last_run_at", "created_at", "updated_at", mode="after")
    @classmethod
    def _utc(cls, moment: datetime | None) -> datetime | None:
        return as_utc(moment) if moment is not None else None


class ScheduleUpdate(BaseModel):
    """The fields of a schedule to change (PATCH); those not given keep their values. The result is
    checked as a whole `ScheduleSpec`, so `job` is a job template checked there."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    job: dict[str, Any] | None = None
    cron: str | None = None
    run_at: AwareDatetime | None = None
    timezone: str = "UTC"
    enabled: bool = True


class SchedulesPublic(BaseModel):
    data: list[SchedulePublic]
    count: int


class UploadPublic(BaseModel):
    id: str
    key: str
    kind: str = Field(description='"image" (an input image) or "zip" (a training dataset).')
    bytes: int
    width: int | None = None
    height: int | None = None
    format: str | None = None
    image: dict[str, str] | None = Field(
        default=None, description='How a job names this image: {"upload": id}.'
    )


class SchedulerPublic(BaseModel):
    name: str
    class_name: str
    overrides: dict[str, Any]
    description: str


class SchedulersPublic(BaseModel):
    data: list[SchedulerPublic]
    default: str


# The job types, for the template's schema; a template's type is checked with each expanded spec.
JOB_TYPES = tuple(JOB_SPEC.json_schema()["discriminator"]["mapping"])
_SWEEP_DESCRIPTION = 'Params field → its values, e.g. {"prompt": [...], "seed": [1, 2]}.'


class BatchTemplate(BaseModel):
    """A job spec whose params the sweep completes; validated once expanded (its errors are located
    at each expansion, `["body", "sweep", index, ...]`), so the schema's limits are only stated here."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(default="text2img", json_schema_extra={"enum": list(JOB_TYPES)})
    model: str = Field(json_schema_extra={"minLength": 1, "maxLength": 512})
    params: dict[str, Any] = {}


class BatchOfJobs(BaseModel):
    """A batch given as a list of job specs (the schema of `BatchCreate`'s first form)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=200)
    priority: Priority = 0
    jobs: list[JobSpec] = Field(min_length=1)


class BatchOfSweep(BaseModel):
    """A batch given as a template and a sweep (the schema of `BatchCreate`'s second form)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=200)
    priority: Priority = 0
    template: BatchTemplate
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        min_length=1, description=_SWEEP_DESCRIPTION
    )


class BatchCreate(BaseModel):
    """Either `jobs`, a list of job specs, or a `template` and a `sweep` that the server expands into
    one job per combination of the sweep's values (the last key varies fastest)."""

    # One model checks both forms, so that a body that is neither gets one plain message rather than the
    # errors of both forms; its JSON schema is the `oneOf` of the two (`BatchOfJobs`, `BatchOfSweep`).

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=200)
    priority: Priority = 0
    jobs: list[JobSpec] | None = Field(default=None, min_length=1)
    template: BatchTemplate | None = None
    sweep: dict[str, list[Any]] | None = Field(default=None, description=_SWEEP_DESCRIPTION)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "title": cls.__name__,
            "description": inspect.cleandoc(cls.__doc__ or ""),
            "oneOf": [
                handler(BatchOfJobs.__pydantic_core_schema__),
                handler(BatchOfSweep.__pydantic_core_schema__),
            ],
        }

    @model_validator(mode="after")
    def _one_source(self) -> "BatchCreate":
        if (self.jobs is None) == (self.template is None):
            raise ValueError("give either jobs (a list of job specs) or a template with a sweep")
        if self.jobs is not None and self.sweep is not None:
            raise ValueError("a sweep expands a template; with a list of jobs, leave sweep out")
        if self.template is not None and not self.sweep:
            raise ValueError('a template needs a sweep, e.g. {"seed": [1, 2, 3]}')
        empty = [key for key, values in (self.sweep or {}).items() if not values]
        if empty:
            raise ValueError(f"sweep values must not be empty: {', '.join(empty)}")
        return self


class BatchRunningJob(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    batch_index: int | None
    progress: dict[str, Any] | None
    worker: str | None
    started_at: datetime | None


class BatchProgress(BaseModel):
    """From a `BatchState`'s attributes."""

    model_config = ConfigDict(from_attributes=True)

    finished: int
    total: int
    fraction: float


class BatchManifestLinks(BaseModel):
    json_url: str
    csv_url: str


class BatchPublic(BaseModel):
    """`BatchPublic.model_validate(batch, context={"state": state, "base_url": base_url})`: the batch row's
    columns, and what its jobs add up to from the `BatchState`."""

    id: uuid.UUID
    name: str | None
    total: int
    status: str
    done: bool
    counts: dict[str, int]
    progress: BatchProgress
    running: list[BatchRunningJob] = Field(description="Running jobs, the first 100 in batch order.")
    manifest: BatchManifestLinks | None = Field(description="Set once every job has finished.")
    created_at: datetime
    canceled_at: datetime | None

    @model_validator(mode="before")
    @classmethod
    def _from_batch_and_state(cls, batch: Any, info: ValidationInfo) -> Any:
        if not isinstance(batch, Batch):
            return batch
        state: BatchState = info.context["state"]
        base = f"{info.context['base_url'].rstrip('/')}/v1/batches/{batch.id}"
        return {
            "id": batch.id,
            "name": batch.name,
            "total": batch.total,
            "created_at": batch.created_at,
            "canceled_at": batch.canceled_at,
            "status": state.status,
            "done": state.done,
            "counts": state.counts,
            "progress": state,
            "running": state.running,
            "manifest": {"json_url": f"{base}/manifest.json", "csv_url": f"{base}/manifest.csv"}
            if state.done
            else None,
        }
