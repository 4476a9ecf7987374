"""Failed jobs wait for no review: ``review_state`` becomes ``not_required`` when a job fails
(as when it is canceled). HITL jobs that failed before this change were left ``pending``
forever, listed by ``review_state=pending`` yet in no reviewer's queue; this fixes them.

Data only. The downgrade leaves them as they are: the older code reads ``not_required`` on a
failed job correctly, and which of them were ``pending`` before is not recorded.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(sa.text("UPDATE jobs SET review_state = 'not_required' "
                       "WHERE status = 'failed' AND review_state = 'pending'"))


def downgrade() -> None:
    pass
