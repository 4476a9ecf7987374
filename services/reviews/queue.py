"""The review queue: HITL jobs waiting for a reviewer, oldest first.

A job waits for reviewer R when it is a HITL job whose ``review_state`` is ``pending`` and
- it is ``awaiting_review``: nobody has given the interpretation review that chooses its
  later phases (the first such review moves it on), so ``interpretation`` is pending; or
- it has ``succeeded`` and R has not reviewed its annotations; pending are the required
  dimensions nobody has reviewed yet (normally ``annotation``).
Jobs in their second stage (queued/running after the gate), failed or canceled jobs have
nothing to review. Autonomous jobs never wait, so they are never listed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import Session

from services.jobs.listing import MAX_LIMIT, decode_cursor, encode_cursor
from shared.db.models import Job, JobMode, JobStatus, Review, ReviewDimension, ReviewState

from .state import required_dimensions


@dataclass(frozen=True)
class QueueEntry:
    job: Job
    pending: list[ReviewDimension]  # what is still to be reviewed, in contract order


@dataclass(frozen=True)
class QueuePage:
    items: list[QueueEntry]
    next_cursor: str | None  # None on the last page


def review_queue(session: Session, *, reviewer_key_id: str, limit: int = 50, cursor: str | None = None) -> QueuePage:
    """One page of the queue of ``reviewer_key_id``; ``cursor`` is the previous page's
    ``next_cursor`` (``InvalidCursor`` when it does not decode)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    annotated_by_me = exists().where(Review.job_id == Job.id, Review.reviewer_key_id == reviewer_key_id,
                                     Review.dimension == ReviewDimension.annotation)
    stmt = select(Job).where(
        Job.mode == JobMode.hitl,
        Job.review_state == ReviewState.pending,
        or_(Job.status == JobStatus.awaiting_review, and_(Job.status == JobStatus.succeeded, ~annotated_by_me)),
    )
    if cursor is not None:
        after_t, after_id = decode_cursor(cursor)
        stmt = stmt.where(or_(Job.created_at > after_t, and_(Job.created_at == after_t, Job.id > after_id)))
    stmt = stmt.order_by(Job.created_at, Job.id).limit(limit + 1)
    rows = list(session.scalars(stmt.execution_options(populate_existing=True)))
    jobs = rows[:limit]
    reviewed = _reviewed(session, [j.id for j in jobs])
    items = [QueueEntry(job=j, pending=_pending(j, reviewed.get(j.id, set()))) for j in jobs]
    next_cursor = encode_cursor(jobs[-1].created_at, jobs[-1].id) if len(rows) > limit else None
    return QueuePage(items=items, next_cursor=next_cursor)


def _reviewed(session: Session, job_ids: list[str]) -> dict[str, set[ReviewDimension]]:
    found: dict[str, set[ReviewDimension]] = {}
    if job_ids:
        rows = session.execute(select(Review.job_id, Review.dimension).where(Review.job_id.in_(job_ids)).distinct())
        for job_id, dimension in rows:
            found.setdefault(job_id, set()).add(ReviewDimension(dimension))
    return found


def _pending(job: Job, reviewed: set[ReviewDimension]) -> list[ReviewDimension]:
    if job.status is JobStatus.awaiting_review:
        return [ReviewDimension.interpretation]  # annotations come after the gate
    missing = required_dimensions(job) - reviewed
    return [d for d in ReviewDimension if d in missing]
