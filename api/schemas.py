"""What the API returns."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from core.batches import BatchState
from core.schedules import as_utc
from core.specs import JobSpec
from core.storage import Storage
from core.tables import Batch, Job, JobMetric, RegisteredModel, Schedule


class JobError(BaseModel):
    code: str
    message: str


class JobOutput(BaseModel):
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


class JobPublic(BaseModel):
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

    @classmethod
    def from_job(cls, job: Job, storage: Storage, base_url: str) -> "JobPublic":
        outputs = [
            JobOutput(**output, url=storage.url(output["key"], base_url=base_url))
            for output in job.outputs or []
        ]
        return cls(
            id=job.id,
            type=job.type,
            model=job.model,
            params=job.params,
            status=job.status,
            progress=job.progress,
            outputs=outputs,
            error=JobError(**job.error) if job.error else None,
            attempts=job.attempts,
            worker=job.worker,
            device=job.device,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            batch_id=job.batch_id,
            batch_index=job.batch_index,
            output_model=job.output_model,
            overwrite_output_model=bool(job.overwrite_output_model),
            schedule_id=job.schedule_id,
            scheduled_for=job.scheduled_for,
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class MetricPublic(BaseModel):
    step: int
    epoch: int
    loss: float
    lr: float

    @classmethod
    def from_metric(cls, metric: JobMetric) -> "MetricPublic":
        return cls(step=metric.step, epoch=metric.epoch, loss=metric.loss, lr=metric.lr)


class MetricsPublic(BaseModel):
    job_id: uuid.UUID
    data: list[MetricPublic]
    count: int


class ModelPublic(BaseModel):
    name: str
    kind: str
    base_model: str | None
    storage_prefix: str
    job_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, model: RegisteredModel) -> "ModelPublic":
        return cls(
            name=model.name,
            kind=model.kind,
            base_model=model.base_model,
            storage_prefix=model.storage_prefix,
            job_id=model.job_id,
            created_at=model.created_at,
            updated_at=model.updated_at,
        )


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int


class SchedulePublic(BaseModel):
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

    @classmethod
    def from_schedule(cls, schedule: Schedule) -> "SchedulePublic":
        def utc(moment: datetime | None) -> datetime | None:
            return as_utc(moment) if moment is not None else None

        return cls(
            id=schedule.id,
            name=schedule.name,
            job=schedule.job,
            cron=schedule.cron,
            timezone=schedule.timezone,
            run_at=utc(schedule.run_at),
            enabled=schedule.enabled,
            next_run_at=utc(schedule.next_run_at),
            last_run_at=utc(schedule.last_run_at),
            created_at=utc(schedule.created_at),
            updated_at=utc(schedule.updated_at),
        )


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


class BatchTemplate(BaseModel):
    """A job spec whose params the sweep completes; validated once expanded."""

    model_config = ConfigDict(extra="forbid")
    type: str = "text2img"
    model: str
    params: dict[str, Any] = {}


class BatchCreate(BaseModel):
    """Either `jobs`, a list of job specs, or a `template` and a `sweep` that the server expands into
    one job per combination of the sweep's values (the last key varies fastest)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=200)
    jobs: list[JobSpec] | None = Field(default=None, min_length=1)
    template: BatchTemplate | None = None
    sweep: dict[str, list[Any]] | None = Field(
        default=None, description='Params field → its values, e.g. {"prompt": [...], "seed": [1, 2]}.'
    )

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
    id: uuid.UUID
    batch_index: int | None
    progress: dict[str, Any] | None
    worker: str | None
    started_at: datetime | None


class BatchProgress(BaseModel):
    finished: int
    total: int
    fraction: float


class BatchManifestLinks(BaseModel):
    json_url: str
    csv_url: str


class BatchPublic(BaseModel):
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

    @classmethod
    def from_batch(cls, batch: Batch, state: BatchState, base_url: str) -> "BatchPublic":
        base = f"{base_url.rstrip('/')}/v1/batches/{batch.id}"
        return cls(
            id=batch.id,
            name=batch.name,
            total=batch.total,
            status=state.status,
            done=state.done,
            counts=state.counts,
            progress=BatchProgress(finished=state.finished, total=state.total, fraction=state.fraction),
            running=[
                BatchRunningJob(
                    id=job.id,
                    batch_index=job.batch_index,
                    progress=job.progress,
                    worker=job.worker,
                    started_at=job.started_at,
                )
                for job in state.running
            ],
            manifest=(
                BatchManifestLinks(json_url=f"{base}/manifest.json", csv_url=f"{base}/manifest.csv")
                if state.done
                else None
            ),
            created_at=batch.created_at,
            canceled_at=batch.canceled_at,
        )
