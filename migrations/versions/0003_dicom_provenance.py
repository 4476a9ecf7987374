"""DICOM provenance kept after de-identification: SOP class, modality and device model on images, the
burned-in annotation flag on jobs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("dicom_sop_class_uid", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("dicom_modality", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("dicom_manufacturer_model", sa.String(length=64), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("burned_in_annotation", sa.String(length=3), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("burned_in_annotation")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("dicom_manufacturer_model")
        batch.drop_column("dicom_modality")
        batch.drop_column("dicom_sop_class_uid")
