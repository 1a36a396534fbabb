"""ORM models. The `jobs` table is the source of truth for every job's state; `models` lists the
models that training jobs made, `schedules` the jobs to submit later, and `job_metrics` each
training step's loss."""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[dict[str, Any]]: JSON}


class JobStatus:
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    ALL = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)
    FINISHED = (SUCCEEDED, FAILED, CANCELED)


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
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # Training jobs: the name the trained model is registered under, and whether it may replace one.
    output_model: Mapped[str | None] = mapped_column(String(100))
    overwrite_output_model: Mapped[bool] = mapped_column(Boolean, default=False)
    # Jobs made by a schedule: which one, and for which due time.
    schedule_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("schedules.id", ondelete="SET NULL"), index=True
    )
    scheduled_for: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelKind:
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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


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
    run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # The due time the beat fires next; None once a one-off schedule has fired.
    next_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
