"""What the API returns."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.batches import BatchState
from core.models import Batch, Job
from core.specs import JobSpec
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
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class UploadPublic(BaseModel):
    id: str
    key: str
    width: int
    height: int
    format: str
    bytes: int
    image: dict[str, str] = Field(description='How a job names this image: {"upload": id}.')


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
