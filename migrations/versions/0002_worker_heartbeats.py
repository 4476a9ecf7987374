"""Worker heartbeats: which worker processes have a loaded model (for /readyz).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker_heartbeats",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.String(length=255), nullable=False),
        sa.Column("model_base", sa.String(length=512), nullable=False),
        sa.Column("model_revision", sa.String(length=128), nullable=False),
        sa.Column("untrained", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_heartbeats")),
    )
    op.create_index(op.f("ix_worker_heartbeats_heartbeat_at"), "worker_heartbeats", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_worker_heartbeats_heartbeat_at"), table_name="worker_heartbeats")
    op.drop_table("worker_heartbeats")
