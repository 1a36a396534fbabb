"""What the API returns."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from core.models import Job, JobMetric, RegisteredModel, Schedule
from core.schedules import as_utc
from core.storage import Storage


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
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
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
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
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


class SchedulesPublic(BaseModel):
    data: list[SchedulePublic]
    count: int


class UploadPublic(BaseModel):
    id: str
    key: str
    bytes: int
