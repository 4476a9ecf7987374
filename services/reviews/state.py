"""A job's ``review_state`` from its reviews: recomputed in the transaction that writes one.

- HITL jobs are ``pending`` until every required dimension has at least one review (by any
  reviewer), then ``reviewed``. Both dimensions are required, except for a job finished
  without later phases (rejected, or ``next_phases: []``): it has no annotations, so its
  interpretation review alone makes it ``reviewed``.
- Autonomous jobs never wait: they stay ``not_required`` (never ``pending``) until QA
  sampling has reviewed both dimensions, then they become ``reviewed``, so that
  ``GET /v1/jobs?review_state=reviewed`` finds the sampled cases of both modes.
- Canceled and failed jobs are left alone (canceling or failing makes them
  ``not_required``: nobody can review them any more).
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from services.jobs import JobNotFound
from shared.db.clock import db_now
from shared.db.models import Job, JobMode, JobStatus, Review, ReviewDimension, ReviewState

from .hitl import finished_without_phases

BOTH = frozenset(ReviewDimension)


def required_dimensions(job: Job) -> frozenset[ReviewDimension]:
    if finished_without_phases(job):
        return frozenset({ReviewDimension.interpretation})
    return BOTH


def reviewed_dimensions(session: Session, job_id: str) -> frozenset[ReviewDimension]:
    rows = session.scalars(select(Review.dimension).where(Review.job_id == job_id).distinct())
    return frozenset(ReviewDimension(d) for d in rows)


def review_state_for(job: Job, reviewed: frozenset[ReviewDimension]) -> ReviewState:
    if job.status in (JobStatus.canceled, JobStatus.failed):
        return job.review_state
    if required_dimensions(job) <= reviewed:
        return ReviewState.reviewed
    return ReviewState.pending if job.mode is JobMode.hitl else ReviewState.not_required


def refresh_review_state(session: Session, job_id: str) -> ReviewState:
    """Store the job's review state as its reviews now say (after a review was flushed)."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise JobNotFound(job_id)
    state = review_state_for(job, reviewed_dimensions(session, job_id))
    if state != job.review_state:
        session.execute(update(Job).where(Job.id == job_id).values(review_state=state, updated_at=db_now(session)),
                        execution_options={"synchronize_session": False})
        session.expire(job)
    return state
