"""Admission control (``FADA_MAX_PENDING_PER_KEY``): jobs indexed by (api_key_id, status), as
every submission counts its key's queued and running jobs (the index replaces the one on
``api_key_id`` alone, which its leftmost column serves); and ``api_keys.max_pending``, a key's
own limit (``fada keys limit``), NULL for the service-wide one.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_api_key_id_status", "jobs", ["api_key_id", "status"])
    op.drop_index("ix_jobs_api_key_id", table_name="jobs")
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("max_pending", sa.Integer(), nullable=True))
        batch.create_check_constraint("max_pending_positive", "max_pending >= 1")


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint("max_pending_positive", type_="check")
        batch.drop_column("max_pending")
    op.create_index("ix_jobs_api_key_id", "jobs", ["api_key_id"])
    op.drop_index("ix_jobs_api_key_id_status", table_name="jobs")
