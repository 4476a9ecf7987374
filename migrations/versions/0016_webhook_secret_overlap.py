"""A rotated webhook signing secret keeps signing beside the new one for an overlap
(``fada keys webhook --rotate-secret --overlap-hours``): each webhook then carries both
signatures (Standard Webhooks allows several), so a receiver can switch secrets without
refusing any event. ``previous_webhook_secret`` is sealed like ``webhook_secret``.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("previous_webhook_secret", sa.String(512), nullable=True))
        batch.add_column(sa.Column("previous_webhook_secret_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("previous_webhook_secret_until")
        batch.drop_column("previous_webhook_secret")
