"""Notifications: webhook URL and signing secret per API key, a webhook URL and notify state
per job, and the outbox of deliveries (webhooks, SR pushes to a PACS) with its attempt log.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id(name: str = "id", *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(length=36), nullable=nullable)


def _ts(name: str, *, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _enum(name: str, constraint: str, values: Sequence[str]) -> sa.Column:
    enum_type = sa.Enum(*values, name=constraint, native_enum=False, create_constraint=True, length=32)
    return sa.Column(name, enum_type, nullable=False)


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("webhook_url", sa.String(length=2048), nullable=True))
        batch.add_column(sa.Column("webhook_secret", sa.String(length=128), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("webhook_url", sa.String(length=2048), nullable=True))
        batch.add_column(sa.Column("notify", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("notified_status", sa.String(length=32), nullable=True))
    op.create_index(op.f("ix_jobs_notify"), "jobs", ["notify"])

    json_type = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
    op.create_table(
        "deliveries",
        _id(),
        _id("job_id"),
        _enum("kind", "delivery_kind", ("webhook", "pacs_sr")),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("payload", json_type, nullable=False),
        _enum("status", "delivery_status", ("pending", "delivered", "failed")),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        _ts("next_attempt_at"),
        sa.Column("lease_owner", sa.String(length=255), nullable=True),
        _ts("lease_expires_at", nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _ts("created_at"),
        _ts("delivered_at", nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_deliveries_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deliveries")),
        sa.UniqueConstraint("job_id", "kind", "event", name=op.f("uq_deliveries_job_id_kind_event")),
    )
    op.create_index("ix_deliveries_status_next_attempt_at", "deliveries", ["status", "next_attempt_at"])
    op.create_table(
        "delivery_attempts",
        _id(),
        _id("delivery_id"),
        sa.Column("attempt", sa.Integer(), nullable=False),
        _ts("at"),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["deliveries.id"],
                                name=op.f("fk_delivery_attempts_delivery_id_deliveries"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_delivery_attempts")),
    )
    op.create_index(op.f("ix_delivery_attempts_delivery_id"), "delivery_attempts", ["delivery_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_delivery_attempts_delivery_id"), table_name="delivery_attempts")
    op.drop_table("delivery_attempts")
    op.drop_index("ix_deliveries_status_next_attempt_at", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_index(op.f("ix_jobs_notify"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("notified_status")
        batch.drop_column("notify")
        batch.drop_column("webhook_url")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("webhook_secret")
        batch.drop_column("webhook_url")
