"""API keys may expire: ``api_keys.expires_at`` (NULL: never); an expired key is refused like
a revoked one. Images record how many frames their upload had (``images.frame_count``; NULL
for rows from before), so an SR names its frame whenever the source is multi-frame.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("frame_count", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("frame_count")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
