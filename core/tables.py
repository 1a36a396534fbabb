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
    Integer,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


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


class Job(Base):
    __tablename__ = "jobs"
    # A schedule makes at most one job per due time, however many beat processes run.
    __table_args__ = (UniqueConstraint("schedule_id", "scheduled_for", name="uq_jobs_schedule_due"),)

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
    # When the broker last accepted this job's message; None while it has not (see core.reconcile).
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
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
