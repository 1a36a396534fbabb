"""job_events and job_previews: the event streams and previews where there is no Redis

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:00:00

Only the embedded defaults (and any deployment without Redis) write these; with Redis the streams and
previews live there (core/events.py).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("stream", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_job_events_stream", "job_events", ["stream"])
    op.create_index("ix_job_events_created_at", "job_events", ["created_at"])
    op.create_table(
        "job_previews",
        sa.Column("job_id", sa.Uuid(), primary_key=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("content_type", sa.String(32), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_job_previews_updated_at", "job_previews", ["updated_at"])


def downgrade() -> None:
    op.drop_table("job_previews")
    op.drop_table("job_events")
