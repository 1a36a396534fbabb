"""owners, API keys, uploads, webhook outbox; owner, priority and webhook on jobs and batches

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 21:00:00

Everything made before this revision belongs to the `default` owner, which `diffq keys create --owner
default` reaches.
"""

import base64
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNED = ("jobs", "batches", "schedules", "models")


def upgrade() -> None:
    owners = op.create_table(
        "owners",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("webhook_secret", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_submit_at", sa.DateTime(timezone=True), nullable=True),
    )
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    op.bulk_insert(owners, [{"name": "default", "webhook_secret": secret, "created_at": datetime.now(UTC)}])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("prefix", sa.String(16), nullable=False, unique=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(100), sa.ForeignKey("owners.name"), nullable=False, index=True),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("limits", sa.JSON(), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "uploads",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(100), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(100), nullable=False, index=True),
        sa.Column("job_id", sa.Uuid(), nullable=True, index=True),
        sa.Column("batch_id", sa.Uuid(), nullable=True, index=True),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("give_up_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "delivery_id",
            sa.String(64),
            sa.ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.String(1000), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
    )
    for table in OWNED:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("owner", sa.String(100), nullable=False, server_default="default"))
            batch_op.create_index(f"ix_{table}_owner", ["owner"])
    for table in ("jobs", "batches"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
            batch_op.add_column(sa.Column("webhook", sa.JSON(), nullable=True))
    with op.batch_alter_table("models") as batch_op:
        batch_op.add_column(sa.Column("published", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("models") as batch_op:
        batch_op.drop_column("published")
    for table in ("jobs", "batches"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("webhook")
            batch_op.drop_column("priority")
    for table in OWNED:
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_index(f"ix_{table}_owner")
            batch_op.drop_column("owner")
    for table in ("webhook_attempts", "webhook_deliveries", "uploads", "api_keys", "owners"):
        op.drop_table(table)
