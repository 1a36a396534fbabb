"""claim-time scheduling: jobs.queue and jobs.fuse_key, the claim's indexes; jobs.enqueued_at dropped

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 09:00:00

The jobs table is the queue (core/scheduling.py): a worker claims the best queued job of the queues it
serves, so each job records its queue. Jobs made before this revision get the queue of their type under
this deployment's settings (`DIFFQ_QUEUE`, `DIFFQ_TRAIN_QUEUE`). `enqueued_at` recorded which jobs the
broker held; messages are now only wake-ups, so nothing reads it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from core.config import get_settings

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRAINING_TYPES = ("train_unconditional", "train_lora")


def upgrade() -> None:
    settings = get_settings()
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("queue", sa.String(200), nullable=True))
        batch_op.add_column(sa.Column("fuse_key", sa.String(64), nullable=True))
        batch_op.drop_column("enqueued_at")
    jobs = sa.table("jobs", sa.column("queue", sa.String), sa.column("type", sa.String))
    op.execute(
        jobs.update().values(
            queue=sa.case((jobs.c.type.in_(TRAINING_TYPES), settings.train_queue), else_=settings.queue)
        )
    )
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.alter_column("queue", existing_type=sa.String(200), nullable=False)
    queued = sa.text("status = 'queued'")
    # The claim's candidates: queued jobs of a worker's queues, by priority and age.
    op.create_index(
        "ix_jobs_queued",
        "jobs",
        ["queue", "priority", "created_at"],
        postgresql_where=queued,
        sqlite_where=queued,
    )
    # Fusion's partners: queued jobs with the same key.
    op.create_index(
        "ix_jobs_queued_fuse_key", "jobs", ["fuse_key"], postgresql_where=queued, sqlite_where=queued
    )
    # Fair share's "who started a job last": max(started_at) per owner, from the index alone.
    op.create_index("ix_jobs_owner_started_at", "jobs", ["owner", "started_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_started_at", table_name="jobs")
    op.drop_index("ix_jobs_queued_fuse_key", table_name="jobs")
    op.drop_index("ix_jobs_queued", table_name="jobs")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_column("fuse_key")
        batch_op.drop_column("queue")
