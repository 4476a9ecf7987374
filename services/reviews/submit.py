"""Writing reviews: create one (and, for the HITL gate, resume or finish the job in the same
transaction) or amend one, keeping every superseded version.

Nothing here commits: the caller runs each call in ``with sessionmaker.begin() as session:``
and, when ``Submitted.resumed`` is true, enqueues the job id AFTER the commit. The job's row
is locked first (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions take the write
lock at BEGIN), so two reviews of one job are written one after the other: the second sees
the first, which keeps ``review_state`` right when two reviewers finish the two dimensions
at the same moment, and lets only one gate review choose the phases.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.jobs import JobNotFound
from services.pipeline.profile import Profile
from shared.db.clock import db_now
from shared.db.models import Job, JobStatus, Result, Review, ReviewDecision, ReviewDimension, ReviewRevision
from shared.db.types import new_id
from shared.schemas.results import ResultDocument

from .corrections import Corrections, check_corrections
from .errors import InvalidReview, ReviewConflict, ReviewExists, ReviewNotFound
from .hitl import Gate, apply_gate, finished_without_phases, gate_of, gate_review_id
from .state import refresh_review_state

REVIEWABLE = frozenset({JobStatus.awaiting_review, JobStatus.succeeded})
SCORES = range(0, 4)


@dataclass(frozen=True)
class ReviewInput:
    """A review's content, as the reviewer sent it (the dimension is given separately)."""

    score: int
    decision: ReviewDecision
    comment: str | None = None
    corrections: Corrections | None = None
    next_phases: list[str] | None = None
    group: str | None = None


@dataclass(frozen=True)
class Submitted:
    review: Review
    gate: Gate | None  # set when this review chose the job's later phases

    @property
    def resumed(self) -> bool:
        """True when the job is queued again: enqueue its id after the commit."""
        return self.gate is not None and self.gate.resumes


def submit_review(session: Session, *, job_id: str, reviewer_key_id: str, dimension: ReviewDimension,
                  data: ReviewInput, profile: Profile, now: datetime | None = None) -> Submitted:
    """Store a new review of ``job_id`` by ``reviewer_key_id``. Raises ``JobNotFound``,
    ``ReviewConflict`` (no result yet, annotation before the job succeeded, phases chosen
    already), ``ReviewExists`` and ``InvalidReview``."""
    now = now or db_now(session)
    job = _locked_job(session, job_id)
    result = session.scalars(select(Result).where(Result.job_id == job_id)).first()
    if job.status not in REVIEWABLE or result is None:
        raise ReviewConflict(f"job {job_id} is {job.status.value}: a job can be reviewed once it has a result "
                             "(awaiting_review or succeeded)", code="not_reviewable", current_status=job.status.value)
    if dimension is ReviewDimension.annotation and job.status is not JobStatus.succeeded:
        raise ReviewConflict(f"job {job_id} is {job.status.value}: its annotations can be reviewed once it has "
                             "succeeded", code="annotations_not_ready", current_status=job.status.value)
    if dimension is ReviewDimension.annotation and finished_without_phases(job):
        raise ReviewConflict(f"job {job_id} was finished without later phases by its interpretation review "
                             f"({_gate_decision(job)}): it has no annotations to review", code="no_annotations",
                             current_status=job.status.value)
    _check_content(data, dimension, profile, result)
    first_stage = ResultDocument.model_validate(result.document) if job.status is JobStatus.awaiting_review else None
    gate = gate_of(job, dimension, data.decision, data.next_phases, data.group, profile,
                   corrections=data.corrections, first_stage=first_stage)
    if _current(session, job_id, reviewer_key_id, dimension) is not None:
        raise ReviewExists(job_id, dimension.value)
    review = Review(
        id=new_id(), job_id=job_id, reviewer_key_id=reviewer_key_id, dimension=dimension, score=data.score,
        decision=data.decision, comment=data.comment, corrections=_stored(data.corrections),
        next_phases=list(data.next_phases) if data.next_phases is not None else None, group_name=data.group,
        job_mode=job.mode, model_revision=job.model_revision, revision=1, created_at=now, amended_at=None,
    )
    try:
        with session.begin_nested():  # the UNIQUE constraint settles a race the check above lost
            session.add(review)
            session.flush()
    except IntegrityError as exc:
        raise ReviewExists(job_id, dimension.value) from exc
    if gate is not None:
        apply_gate(session, job_id, gate, review.id)
    refresh_review_state(session, job_id)
    return Submitted(review=review, gate=gate)


def save_review(session: Session, *, job_id: str, reviewer_key_id: str, dimension: ReviewDimension,
                data: ReviewInput, profile: Profile) -> Submitted:
    """The caller's review of ``dimension``: made, or amended when they have one (a form that
    offers both, as the job page does). Only a new review can be the HITL gate."""
    mine = session.scalar(select(Review.id).where(Review.job_id == job_id, Review.reviewer_key_id == reviewer_key_id,
                                                  Review.dimension == dimension))
    if mine is None:
        return submit_review(session, job_id=job_id, reviewer_key_id=reviewer_key_id, dimension=dimension,
                             data=data, profile=profile)
    return Submitted(review=amend_review(session, job_id=job_id, reviewer_key_id=reviewer_key_id,
                                         dimension=dimension, data=data, profile=profile), gate=None)


def amend_review(session: Session, *, job_id: str, reviewer_key_id: str, dimension: ReviewDimension,
                 data: ReviewInput, profile: Profile, now: datetime | None = None) -> Review:
    """Replace the caller's review of ``dimension`` with ``data``; the previous version goes to
    ``review_revisions`` and ``revision`` goes up by one. ``next_phases`` and ``group`` record
    what the job ran, so they may be repeated or left out (kept) but not changed; the review
    that decided a HITL job's phases cannot switch between reject and accept/correct."""
    now = now or db_now(session)
    job = _locked_job(session, job_id)
    review = _current(session, job_id, reviewer_key_id, dimension)
    if review is None:
        raise ReviewNotFound(job_id, dimension.value)
    result = session.scalars(select(Result).where(Result.job_id == job_id)).first()
    _check_content(data, dimension, profile, result)
    if data.next_phases is not None and list(data.next_phases) != review.next_phases:
        raise InvalidReview(f"next_phases cannot be amended (they record what the job ran): they are "
                            f"{review.next_phases}; repeat them or leave them out")
    if data.group is not None and data.group != review.group_name:
        raise InvalidReview(f"group cannot be amended (it records what the job ran): it is {review.group_name!r}; "
                            "repeat it or leave it out")
    rejected_before = review.decision is ReviewDecision.reject
    if gate_review_id(job) == review.id and rejected_before != (data.decision is ReviewDecision.reject):
        raise ReviewConflict(f"this review decided the later phases of job {job_id} (decision "
                             f"{review.decision.value}); its decision can change between accept and correct only",
                             code="decision_fixed", current_status=job.status.value)
    session.add(ReviewRevision(
        id=new_id(), review_id=review.id, revision=review.revision, score=review.score, decision=review.decision,
        comment=review.comment, corrections=review.corrections, next_phases=review.next_phases,
        group_name=review.group_name, created_at=review.amended_at or review.created_at, superseded_at=now,
    ))
    review.score = data.score
    review.decision = data.decision
    review.comment = data.comment
    review.corrections = _stored(data.corrections)
    review.revision += 1
    review.amended_at = now
    session.flush()
    session.expire(review, ["history"])
    refresh_review_state(session, job_id)
    return review


def _locked_job(session: Session, job_id: str) -> Job:
    job = session.scalars(
        select(Job).where(Job.id == job_id).with_for_update().execution_options(populate_existing=True)
    ).first()
    if job is None:
        raise JobNotFound(job_id)
    return job


def _current(session: Session, job_id: str, reviewer_key_id: str, dimension: ReviewDimension) -> Review | None:
    return session.scalars(select(Review).where(
        Review.job_id == job_id, Review.reviewer_key_id == reviewer_key_id, Review.dimension == dimension,
    ).execution_options(populate_existing=True)).first()


def _check_content(data: ReviewInput, dimension: ReviewDimension, profile: Profile, result: Result | None) -> None:
    # The API's model checks these too; the service must not rely on its callers.
    if isinstance(data.score, bool) or data.score not in SCORES:
        raise InvalidReview(f"score must be 0, 1, 2 or 3 (0 = not assessable); got {data.score!r}")
    if data.corrections is None:
        return
    image = (result.document if result is not None else {}).get("image") or {}
    width, height = image.get("width"), image.get("height")
    if not isinstance(width, int) or not isinstance(height, int):
        raise ReviewConflict("the job's result has no image size to check corrections against", code="no_image_size")
    check_corrections(data.corrections, dimension=dimension, profile=profile, width=width, height=height)


def _gate_decision(job: Job) -> str:
    decision = (job.hitl_choice or {}).get("decision")
    if decision is None:  # a choice saved before the decision was kept in it
        return "rejected, or no phases chosen"
    return "rejected" if decision == ReviewDecision.reject.value else "no phases chosen"


def _stored(corrections: Corrections | None) -> dict[str, Any] | None:
    return None if corrections is None else corrections.model_dump(mode="json")
