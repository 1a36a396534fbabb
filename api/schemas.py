"""What the API returns."""

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from core.models import Job
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
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int
