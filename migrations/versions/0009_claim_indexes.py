"""the claim's index walk: ix_jobs_claim and ix_jobs_claim_model (Postgres)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 03:30:00

On Postgres a worker's claim walks these two partial indexes of the queued jobs instead of sorting the
queue (core/indexed_claim.py): each queue's owners, and each owner's jobs in claim order, all of them or
one model's. SQLite keeps sorting (the embedded default holds a few jobs), so it gets neither.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ORDER = [sa.text("priority DESC"), "created_at", "batch_index", "id"]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    queued = sa.text("status = 'queued'")
    # Built without locking the table against writes, so that a live deployment keeps taking and
    # claiming jobs meanwhile (CONCURRENTLY can't run in a transaction).
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_jobs_claim",
            "jobs",
            ["queue", "owner", *ORDER],
            postgresql_where=queued,
            postgresql_concurrently=True,
        )
        op.create_index(
            "ix_jobs_claim_model",
            "jobs",
            ["queue", "owner", "model", *ORDER],
            postgresql_where=queued,
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_jobs_claim_model", table_name="jobs")
    op.drop_index("ix_jobs_claim", table_name="jobs")
