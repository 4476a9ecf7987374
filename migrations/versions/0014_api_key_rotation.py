"""API key rotation (``fada keys rotate``): a key's secret is replaced while its identity (id,
jobs, idempotency keys, limits, webhook) stays; the previous secret keeps working until
``previous_valid_until``, so a caller can switch without a gap; ``previous_last_used_at`` says
whether it still uses the old one.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("previous_key_prefix", sa.String(16), nullable=True))
        batch.add_column(sa.Column("previous_key_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("previous_valid_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("previous_last_used_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_api_keys_previous_key_hash", ["previous_key_hash"])


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_index("ix_api_keys_previous_key_hash")
        batch.drop_column("previous_last_used_at")
        batch.drop_column("previous_valid_until")
        batch.drop_column("previous_key_hash")
        batch.drop_column("previous_key_prefix")
        batch.drop_column("rotated_at")
