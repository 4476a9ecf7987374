"""Jobs indexed by ``started_at``: the sweeper asks every pass whether any job was claimed
within the queued grace period (a backlog being worked through is not a lost message).

And the HITL choice records the gate review's decision (``hitl_choice.decision``): a job whose
interpretation the reviewer rejected has no SR and pushes none to the PACS. Choices saved
before get it from the review they name (``hitl_choice.review_id``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("hitl_choice", JSON))
reviews = sa.table("reviews", sa.column("id", sa.String), sa.column("decision", sa.String))


def upgrade() -> None:
    op.create_index("ix_jobs_started_at", "jobs", ["started_at"])
    conn = op.get_bind()
    choices = conn.execute(sa.select(jobs.c.id, jobs.c.hitl_choice).where(jobs.c.hitl_choice.is_not(None))).all()
    for job_id, choice in choices:
        if not isinstance(choice, dict) or "decision" in choice or not choice.get("review_id"):
            continue
        decision = conn.scalar(sa.select(sa.cast(reviews.c.decision, sa.String))
                               .where(reviews.c.id == choice["review_id"]))
        if decision is not None:
            filled = {**choice, "decision": decision}
            conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(hitl_choice=filled))


def downgrade() -> None:
    # hitl_choice keeps "decision": older code ignores keys it does not read
    op.drop_index("ix_jobs_started_at", table_name="jobs")
