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
from pydantic.json_schema import JsonSchemaValue, SkipJsonSchema
from pydantic_core import CoreSchema

# The job and batch documents are core's (a webhook's body is the same); the API shows them as they are.
from core.public import (
    BatchManifestLinks,
    BatchProgress,
    BatchPublic,
    BatchRunningJob,
    JobError,
    JobOutput,
    JobPublic,
)
from core.schedules import as_utc
from core.specs import JOB_SPEC, BatchWebhook, JobSpec, Priority
from core.tables import WebhookAttempt, WebhookDelivery

# Re-exported: the routes import every document they return from here.
__all__ = [
    "BatchManifestLinks",
    "BatchProgress",
    "BatchPublic",
    "BatchRunningJob",
    "JobError",
    "JobOutput",
    "JobPublic",
]


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class BatchesPublic(BaseModel):
    data: list[BatchPublic]
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
    owner: str
    published: bool = Field(description="Whether every owner may use it (an admin publishes models).")


class ModelUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    published: bool = Field(description="Let every owner use the model (true), or only its owner (false).")


class PrincipalPublic(BaseModel):
    """Who the request's API key acts for."""

    owner: str
    scopes: list[str]
    key_id: uuid.UUID | None
    limits: dict[str, int | str] = Field(description="The owner quotas that apply to this key.")


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
_WEBHOOK_DESCRIPTION = (
    "Where to send the batch's `completed` event and, for each of its jobs that names no webhook of its "
    "own, the job events listed."
)


class BatchTemplate(BaseModel):
    """A job spec whose params the sweep completes; validated once expanded (its errors are located
    at each expansion, `["body", "sweep", index, ...]`), so the schema's limits are only stated here."""

    model_config = ConfigDict(extra="forbid")
    type: str = Field(default="text2img", json_schema_extra={"enum": list(JOB_TYPES)})
    model: str = Field(json_schema_extra={"minLength": 1, "maxLength": 512})
    params: dict[str, Any] = {}
    # Fields a single job spec takes that a template's jobs get from the batch: named here (not in the
    # schema, never dumped) only to say where they go, where "Extra inputs are not permitted" did not.
    # Refused rather than taken: a template's priority would be every job's, beside the batch's own
    # `priority`, which the batch row also records; two places for one value.
    priority: SkipJsonSchema[Any] = Field(default=None, exclude=True)
    webhook: SkipJsonSchema[Any] = Field(default=None, exclude=True)

    @field_validator("priority", "webhook")
    @classmethod
    def _set_on_the_batch(cls, value: Any, info: ValidationInfo) -> None:
        if value is not None:
            raise ValueError(TEMPLATE_FIELDS_ON_THE_BATCH[str(info.field_name)])


# Where a field set in a template goes instead: the batch's own field of that name.
TEMPLATE_FIELDS_ON_THE_BATCH = {
    "priority": (
        'set priority on the batch, not in its template: {"priority": 5, "template": {...}, "sweep": {...}}; '
        "its jobs take the batch's priority"
    ),
    "webhook": (
        'set webhook on the batch, not in its template: {"webhook": {"url": ..., "events": [...]}, '
        '"template": {...}, "sweep": {...}}; the batch\'s webhook gets the events listed for each of its jobs'
    ),
}


class BatchOfJobs(BaseModel):
    """A batch given as a list of job specs (the schema of `BatchCreate`'s first form)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=200)
    priority: Priority = 0
    jobs: list[JobSpec] = Field(min_length=1)
    webhook: BatchWebhook | None = Field(default=None, description=_WEBHOOK_DESCRIPTION)


class BatchOfSweep(BaseModel):
    """A batch given as a template and a sweep (the schema of `BatchCreate`'s second form)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=200)
    priority: Priority = 0
    template: BatchTemplate
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        min_length=1, description=_SWEEP_DESCRIPTION
    )
    webhook: BatchWebhook | None = Field(default=None, description=_WEBHOOK_DESCRIPTION)


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
    webhook: BatchWebhook | None = Field(default=None, description=_WEBHOOK_DESCRIPTION)

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


class WebhookAttemptPublic(BaseModel):
    """One try at sending a delivery: the receiver's HTTP status, or why there was none."""

    model_config = ConfigDict(from_attributes=True)

    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class WebhookDeliveryPublic(BaseModel):
    """One event for a webhook URL. `id` is the `webhook-id` header, the same on every attempt; `status` is
    `pending` (to be sent, or sent again at `next_attempt_at`), `delivered` (answered 2xx), `gone`
    (answered 410: not sent again) or `failed` (not answered 2xx before `give_up_at`)."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    event: str
    url: str
    status: str
    job_id: uuid.UUID | None
    batch_id: uuid.UUID | None
    created_at: datetime
    next_attempt_at: datetime
    give_up_at: datetime
    finished_at: datetime | None
    attempts: list[WebhookAttemptPublic]


DELIVERY_COLUMNS = [name for name in WebhookDeliveryPublic.model_fields if name != "attempts"]


class WebhookDeliveriesPublic(BaseModel):
    data: list[WebhookDeliveryPublic]
    count: int

    @classmethod
    def of(cls, found: list[tuple[WebhookDelivery, list[WebhookAttempt]]]) -> "WebhookDeliveriesPublic":
        """From `core.webhooks.deliveries`."""
        data = [
            WebhookDeliveryPublic.model_validate(
                {
                    **{name: getattr(delivery, name) for name in DELIVERY_COLUMNS},
                    "attempts": [WebhookAttemptPublic.model_validate(attempt) for attempt in attempts],
                }
            )
            for delivery, attempts in found
        ]
        return cls(data=data, count=len(data))
