"""Reading reviews back: a job's current reviews with their history, or one reviewer's own."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from services.jobs import JobNotFound
from shared.db.models import ApiKey, Job, Review, ReviewDimension

from .errors import ReviewConflict, ReviewNotFound, UnknownReview


@dataclass(frozen=True)
class ReviewRecord:
    """A review and the name of the key that wrote it (its ``history`` is loaded)."""

    review: Review
    reviewer_name: str


def list_reviews(session: Session, job_id: str) -> list[ReviewRecord]:
    """The job's current reviews, oldest first, each with its superseded versions."""
    if session.get(Job, job_id) is None:
        raise JobNotFound(job_id)
    rows = session.execute(
        select(Review, ApiKey.name)
        .join(ApiKey, ApiKey.id == Review.reviewer_key_id)
        .where(Review.job_id == job_id)
        .options(selectinload(Review.history))
        .order_by(Review.created_at, Review.id)
        .execution_options(populate_existing=True)
    )
    return [ReviewRecord(review=review, reviewer_name=name) for review, name in rows]


def get_own_review(session: Session, job_id: str, reviewer_key_id: str, dimension: ReviewDimension) -> ReviewRecord:
    if session.get(Job, job_id) is None:
        raise JobNotFound(job_id)
    row = session.execute(
        select(Review, ApiKey.name)
        .join(ApiKey, ApiKey.id == Review.reviewer_key_id)
        .where(Review.job_id == job_id, Review.reviewer_key_id == reviewer_key_id, Review.dimension == dimension)
        .options(selectinload(Review.history))
        .execution_options(populate_existing=True)
    ).first()
    if row is None:
        raise ReviewNotFound(job_id, dimension.value)
    return ReviewRecord(review=row[0], reviewer_name=row[1])


@dataclass(frozen=True)
class CorrectedAnnotations:
    """A review's corrected annotations, with who gave them and how they scored the model's."""

    review_id: str
    reviewer: str
    score: int
    decision: str
    annotations: list[dict[str, Any]]


def corrected_annotations(session: Session, job_id: str, review_id: str) -> CorrectedAnnotations:
    """The annotations a reviewer drew in place of the model's: the review's current
    ``corrections.annotations``. A review that corrects no annotations (an acceptance, an
    interpretation review) is a 409, not an empty list: its annotations are the model's."""
    if session.get(Job, job_id) is None:
        raise JobNotFound(job_id)
    row = session.execute(
        select(Review, ApiKey.name).join(ApiKey, ApiKey.id == Review.reviewer_key_id)
        .where(Review.job_id == job_id, Review.id == review_id)
    ).first()
    if row is None:
        raise UnknownReview(job_id, review_id)
    review, name = row
    annotations = (review.corrections or {}).get("annotations")
    if review.dimension is not ReviewDimension.annotation or annotations is None:
        raise ReviewConflict(
            f"review {review_id} ({review.dimension.value}, {review.decision.value}) corrects no annotations: "
            "the annotations it judged are the model's", code="no_corrections")
    return CorrectedAnnotations(review_id=review.id, reviewer=name, score=review.score,
                                decision=review.decision.value, annotations=list(annotations))
