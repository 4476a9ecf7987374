"""Jobs indexed by (api_key_id, status): the admission check counts a key's queued and
running jobs at every submission (``FADA_MAX_PENDING_PER_KEY``). It replaces the index on
``api_key_id`` alone, which its leftmost column serves.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_jobs_api_key_id_status", "jobs", ["api_key_id", "status"])
    op.drop_index("ix_jobs_api_key_id", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_api_key_id", "jobs", ["api_key_id"])
    op.drop_index("ix_jobs_api_key_id_status", table_name="jobs")
