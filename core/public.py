"""Jobs and batches as the API shows them (`GET /v1/jobs/{id}`, `GET /v1/batches/{id}`).

They live in core, not api, because a webhook's body is the same document and workers write webhook
deliveries (core/webhooks.py) without importing the API. `render_job` and `render_batch` give the JSON.
"""

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from core.batches import BatchState
from core.specs import BatchWebhook, JobWebhook
from core.storage import Storage
from core.tables import Batch, Job


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
    owner: str
    priority: int = Field(default=0, description="Higher runs first (core/scheduling.py).")
    webhook: JobWebhook | None = None

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
    owner: str
    priority: int = Field(default=0, description="Its jobs' priority unless a job names its own.")
    webhook: BatchWebhook | None = None

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
            "owner": batch.owner,
            "priority": batch.priority,
            "webhook": batch.webhook,
            "status": state.status,
            "done": state.done,
            "counts": state.counts,
            "progress": state,
            "running": state.running,
            "manifest": {"json_url": f"{base}/manifest.json", "csv_url": f"{base}/manifest.csv"}
            if state.done
            else None,
        }


def render_job(job: Job, storage: Storage, base_url: str) -> str:
    """The job as JSON, as `GET /v1/jobs/{id}` returns it."""
    return JobPublic.model_validate(job, context={"storage": storage, "base_url": base_url}).model_dump_json()


def render_batch(batch: Batch, state: BatchState, base_url: str) -> str:
    """The batch as JSON, as `GET /v1/batches/{id}` returns it."""
    return BatchPublic.model_validate(batch, context={"state": state, "base_url": base_url}).model_dump_json()
