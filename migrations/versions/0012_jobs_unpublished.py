"""Jobs whose message the broker refused are marked (``jobs.unpublished``), so the sweeper
sends it at its next pass instead of after FADA_QUEUED_GRACE_SECONDS.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("unpublished", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index(op.f("ix_jobs_unpublished"), "jobs", ["unpublished"])


def downgrade() -> None:
    op.drop_index(op.f("ix_jobs_unpublished"), table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("unpublished")
