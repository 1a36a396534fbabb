"""fleet: the device each job ran on; a `workers` table of worker nodes and their pipeline caches

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-22 01:48:07.683910
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("device", sa.String(length=255), nullable=False),
        sa.Column("queues", sa.JSON(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("current_job", sa.Uuid(), nullable=True),
        sa.Column("current_model", sa.String(length=512), nullable=True),
        sa.Column("resident", sa.JSON(), nullable=False),
        sa.Column("cache_budget_bytes", sa.BigInteger(), nullable=True),
        sa.Column("cache_hits", sa.BigInteger(), nullable=False),
        sa.Column("cache_misses", sa.BigInteger(), nullable=False),
        sa.Column("cache_evictions", sa.BigInteger(), nullable=False),
        sa.Column("cache_load_seconds", sa.Float(), nullable=False),
        sa.Column("jobs_run", sa.BigInteger(), nullable=False),
        sa.Column("busy_seconds", sa.Float(), nullable=False),
        sa.Column("denoising_steps", sa.BigInteger(), nullable=False),
        sa.Column("denoising_seconds", sa.Float(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workers_last_seen"), ["last_seen"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("device", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("device")

    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workers_last_seen"))

    op.drop_table("workers")
