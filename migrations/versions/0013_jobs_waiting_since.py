"""``jobs.waiting_since``: when a job last began to wait for a worker (queued) or a
sonographer (awaiting_review), for the metric of the oldest waiting job. Jobs waiting at the
upgrade get their best known time: a queued job its submission, one awaiting review its last
change.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET waiting_since = created_at WHERE status = 'queued'")
    op.execute("UPDATE jobs SET waiting_since = updated_at WHERE status = 'awaiting_review'")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("waiting_since")
