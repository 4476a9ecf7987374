"""Image retention: a finished job's pixels can be deleted (``images.data`` NULL) while the row,
its sizes, sha256 and DICOM UIDs stay, with ``purged_at`` saying when.

The downgrade refuses while purged images exist: the older schema has no place for an image
without pixels.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
        batch.alter_column("data", existing_type=sa.LargeBinary(), nullable=True)


def downgrade() -> None:
    purged = op.get_bind().execute(sa.text("SELECT count(*) FROM images WHERE data IS NULL")).scalar_one()
    if purged:
        raise RuntimeError(f"{purged} image(s) were purged by the retention policy; revision 0006 cannot hold an "
                           "image without pixels, so this downgrade stops here")
    with op.batch_alter_table("images") as batch:
        batch.alter_column("data", existing_type=sa.LargeBinary(), nullable=False)
        batch.drop_column("purged_at")
