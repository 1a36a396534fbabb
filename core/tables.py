"""ORM models. The `jobs` table is the source of truth for every job's state; `models` lists the
models that training jobs made, `schedules` the jobs to submit later, and `job_metrics` each
training step's loss."""

import uuid
from datetime import UTC, datetime
from enum import StrEnum, nonmember
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# The owner of every job made before owners existed, and of everything when auth is off.
DEFAULT_OWNER = "default"
# The largest values of Postgres's `integer` (Integer columns) and `bigint` (BigInteger columns, and the
# LIMIT and OFFSET of a query): the bounds of the API parameters compared with them.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A `DateTime(timezone=True)` column that always reads back as an aware UTC datetime.

    Postgres keeps the zone; SQLite stores none and hands back naive datetimes. Every time diffq writes
    is in UTC (`utcnow`), so a value is converted to UTC going in and a naive one is UTC coming out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None or value.tzinfo is None:
            return value
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _default_queue(context: Any) -> str:
    from core.job_types import queue_for  # core.job_types imports the specs, which import much

    return queue_for(context.get_current_parameters()["type"])


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[dict[str, Any]]: JSON}


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    ALL = nonmember((QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED))
    ACTIVE = nonmember((QUEUED, RUNNING))  # not finished yet: can be canceled
    FINISHED = nonmember((SUCCEEDED, FAILED, CANCELED))


class OutputKind(StrEnum):
    """The `kind` of a training job's output records; a generated image's record has none."""

    CHECKPOINT = "checkpoint"
    SAMPLE_GRID = "sample_grid"
    MODEL = "model"
    MODEL_SNAPSHOT = "model_snapshot"


_QUEUED = text("status = 'queued'")


class Job(Base):
    __tablename__ = "jobs"
    # A schedule makes at most one job per due time, however many beat processes run.
    __table_args__ = (
        UniqueConstraint("schedule_id", "scheduled_for", name="uq_jobs_schedule_due"),
        # The claim's (core/scheduling.py): queued jobs by queue, priority and age; fusion's partners; and
        # each owner's latest start, for fair share (migration 0007).
        Index(
            "ix_jobs_queued",
            "queue",
            "priority",
            "created_at",
            postgresql_where=_QUEUED,
            sqlite_where=_QUEUED,
        ),
        Index("ix_jobs_queued_fuse_key", "fuse_key", postgresql_where=_QUEUED, sqlite_where=_QUEUED),
        # The claim's index walk on Postgres (core/indexed_claim.py, migration 0009): each queue's owners
        # with queued jobs, and each one's jobs in claim order, all of them or one model's.
        Index(
            "ix_jobs_claim",
            "queue",
            "owner",
            text("priority DESC"),
            "created_at",
            "batch_index",
            "id",
            postgresql_where=_QUEUED,
        ).ddl_if(dialect="postgresql"),
        Index(
            "ix_jobs_claim_model",
            "queue",
            "owner",
            "model",
            text("priority DESC"),
            "created_at",
            "batch_index",
            "id",
            postgresql_where=_QUEUED,
        ).ddl_if(dialect="postgresql"),
        Index("ix_jobs_owner_started_at", "owner", "started_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    type: Mapped[str] = mapped_column(String(32))
    model: Mapped[str | None] = mapped_column(String(512))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True, default=JobStatus.QUEUED)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # The queue the job waits in: the workers that serve it may claim it (core/scheduling.py). Unset, the
    # queue of its type under this process's settings (`DIFFQ_QUEUE` or `DIFFQ_TRAIN_QUEUE`).
    queue: Mapped[str] = mapped_column(String(200), default=_default_queue)
    # Jobs with the same key can run as one pipeline call (workers/fusion.py); None: never fused.
    fuse_key: Mapped[str | None] = mapped_column(String(64))
    # The device the job ran on, as its worker names it: "cuda:2 (NVIDIA H100 80GB HBM3)" or "cpu".
    device: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Set for the jobs of a batch: which batch, and the job's place in it (the order it was submitted in).
    batch_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("batches.id", name="fk_jobs_batch_id_batches"), index=True
    )
    batch_index: Mapped[int | None] = mapped_column(Integer)

    # Training jobs: the name the trained model is registered under, and whether it may replace one.
    output_model: Mapped[str | None] = mapped_column(String(100))
    overwrite_output_model: Mapped[bool] = mapped_column(Boolean, default=False)
    # Jobs made by a schedule: which one, and for which due time.
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("schedules.id", ondelete="SET NULL"), index=True
    )
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # Who submitted it (an `owners` name; see core/auth.py), how urgent it is (higher runs first), and
    # where to POST its events: {"url": ..., "events": [...]} (see core/webhooks.py).
    owner: Mapped[str] = mapped_column(String(100), default=DEFAULT_OWNER, index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    webhook: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Batch(Base):
    """Many jobs submitted at once. Their state lives on the jobs; a batch only groups them."""

    __tablename__ = "batches"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str | None] = mapped_column(String(200))
    total: Mapped[int] = mapped_column(Integer)
    # How the jobs were given: {"source": "jobs" | "jsonl" | "sweep", ...} with a sweep's template and axes.
    source: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    canceled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    owner: Mapped[str] = mapped_column(String(100), default=DEFAULT_OWNER, index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    webhook: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class WorkerNode(Base):
    """One worker process of the fleet, as it last reported itself (see core/worker_nodes.py).

    The API reads these rows for `/metrics` and for model affinity: it cannot see a worker's memory, so
    each worker writes what it has loaded here, at every job and every heartbeat.
    """

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # the Celery node name, gpu0@host
    device: Mapped[str] = mapped_column(String(255))
    queues: Mapped[list[str]] = mapped_column(JSON, default=list)
    pid: Mapped[int] = mapped_column(Integer)
    current_job: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    current_model: Mapped[str | None] = mapped_column(String(512))
    # [{"model": reference, "bytes": n}, ...], least recently used first.
    resident: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    cache_budget_bytes: Mapped[int | None] = mapped_column(BigInteger)
    cache_hits: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_misses: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_evictions: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_load_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    jobs_run: Mapped[int] = mapped_column(BigInteger, default=0)
    busy_seconds: Mapped[float] = mapped_column(Float, default=0.0)  # from claim to finish, loads included
    denoising_steps: Mapped[int] = mapped_column(BigInteger, default=0)
    denoising_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ModelKind(StrEnum):
    UNCONDITIONAL = "unconditional"
    LORA = "lora"


class RegisteredModel(Base):
    """A model a training job made, stored in diffusers format under `storage_prefix`."""

    __tablename__ = "models"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    # For a LoRA: the model it was trained on.
    base_model: Mapped[str | None] = mapped_column(String(512))
    # `models/<name>/<job id>`: each registration has its own prefix, so replacing a model never
    # changes files that a worker may be reading or has cached.
    storage_prefix: Mapped[str] = mapped_column(String(1024))
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # The owner of the job that made it. Other owners may use it only once an admin published it.
    owner: Mapped[str] = mapped_column(String(100), default=DEFAULT_OWNER, index=True)
    published: Mapped[bool] = mapped_column(Boolean, default=False)


class JobMetric(Base):
    """One optimizer step of a training job. Written in batches with the job's progress."""

    __tablename__ = "job_metrics"

    job_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float] = mapped_column(Float)
    lr: Mapped[float] = mapped_column(Float)


class Schedule(Base):
    """A job template submitted on a cron expression or once at `run_at`."""

    __tablename__ = "schedules"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str | None] = mapped_column(String(200))
    job: Mapped[dict[str, Any]] = mapped_column(JSON)
    cron: Mapped[str | None] = mapped_column(String(255))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # The due time the beat fires next; None once a one-off schedule has fired.
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    owner: Mapped[str] = mapped_column(String(100), default=DEFAULT_OWNER, index=True)


class Owner(Base):
    """Whoever submits jobs: a person or a service, reached through its API keys (core/auth.py)."""

    __tablename__ = "owners"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    # The Standard Webhooks secret ("whsec_" + base64) that signs this owner's webhook deliveries.
    webhook_secret: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Written by every admission that counts the owner's jobs, so that concurrent submitters of one owner
    # take turns (a row lock on Postgres, the write lock on SQLite) and a quota can't be overshot.
    last_submit_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiKey(Base):
    """An API key. Only its SHA-256 is stored; `prefix` (public, in the key itself) finds the row."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(100), ForeignKey("owners.name"), index=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    # Per-key overrides of the owner quotas in settings: {"max_queued_jobs": 10, ...} (core/quotas.py).
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Upload(Base):
    """A file sent to `POST /v1/uploads`: whose it is, and its size for the daily upload quota."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # 32 hex digits
    owner: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "image" | "zip"
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class WebhookDelivery(Base):
    """One event to POST to a webhook URL: the outbox row, written in the transaction that changed the
    job, and sent by core/webhooks.py's dispatcher until it is answered 2xx, answered 410, or gives up.

    `id` is the Standard Webhooks `webhook-id`: the same on every retry, so receivers can drop repeats.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(100), index=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    event: Mapped[str] = mapped_column(String(32))  # "job.started", "batch.completed", ...
    url: Mapped[str] = mapped_column(String(2048))
    payload: Mapped[str] = mapped_column(Text)  # the exact JSON body that is signed and sent
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    give_up_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookAttempt(Base):
    """One try at sending a delivery, and what the receiver answered."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(1000))
    duration_ms: Mapped[float] = mapped_column(Float)


class JobEvent(Base):
    """One event of a job's or a batch's stream, where there is no Redis (the embedded defaults; see
    core/events.py). `id` orders a stream's events and is the Server-Sent Event id."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # "job:<id>" or "batch:<id>"
    stream: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class JobPreview(Base):
    """The latest preview of a running job, where there is no Redis (see core/events.py)."""

    __tablename__ = "job_previews"

    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    step: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str] = mapped_column(String(32))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
