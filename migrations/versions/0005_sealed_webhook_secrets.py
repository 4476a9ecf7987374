"""Webhook signing secrets are stored sealed (Fernet), which needs a wider column. Secrets
stored before are sealed by `fada keys seal-secrets`, not here: a migration must not pick the
key, and sealing with a key the workers lack would stop every delivery.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("webhook_secret", existing_type=sa.String(length=128), type_=sa.String(length=512),
                           existing_nullable=True)


def downgrade() -> None:
    # Sealed secrets do not fit the old column and the old code cannot open them: they are
    # dropped, and an administrator issues new ones (`fada keys webhook KEY --rotate-secret`).
    op.execute(sa.text("UPDATE api_keys SET webhook_secret = NULL WHERE length(webhook_secret) > 128"))
    with op.batch_alter_table("api_keys") as batch:
        batch.alter_column("webhook_secret", existing_type=sa.String(length=512), type_=sa.String(length=128),
                           existing_nullable=True)
