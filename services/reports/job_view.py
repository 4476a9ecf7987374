"""Everything a person needs to judge one job, read in one session: the job, its result, its
picture (the image with the annotations drawn, or why there is none) and its reviews."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from services.export.overlay import result_overlay
from services.jobs import ImagePurged, JobNotFound, current_document, stored_png
from services.reviews import CorrectedAnnotations, corrected_annotations, list_reviews
from shared.db.models import Job, Review
from shared.schemas.results import ResultDocument


@dataclass(frozen=True)
class ReviewLine:
    """One current review as the page lists it."""

    id: str
    reviewer: str
    reviewer_key_id: str
    dimension: str
    score: int
    decision: str
    comment: str | None
    revision: int
    created_at: datetime
    amended_at: datetime | None
    corrects_annotations: bool
    corrected_label: str | None
    corrected_interpretation: dict[str, str] | None
    next_phases: list[str] | None
    group: str | None


@dataclass(frozen=True)
class JobView:
    job: Job  # detached: read its columns only
    document: ResultDocument | None
    picture: bytes | None  # PNG: the overlay, or the bare image before a result
    picture_note: str  # what the picture shows, or why there is none
    reviews: list[ReviewLine]
    shown_review: ReviewLine | None  # whose corrected annotations the picture shows; None: the model's


def job_view(session: Session, job_id: str, *, classes: list[str], review_id: str | None = None) -> JobView:
    """The view of ``job_id``; with ``review_id`` the picture shows that annotation review's
    corrected annotations (``services.reviews`` errors when it has none)."""
    job = session.get(Job, job_id)
    if job is None:
        raise JobNotFound(job_id)
    reviews = [_line(r.review, r.reviewer_name) for r in list_reviews(session, job_id)]
    shown: ReviewLine | None = None
    reviewed: CorrectedAnnotations | None = None
    if review_id is not None:
        reviewed = corrected_annotations(session, job_id, review_id)
        shown = next(line for line in reviews if line.id == reviewed.review_id)
    document = current_document(session, job_id)
    session.expunge(job)
    try:
        png = stored_png(session, job_id)
    except ImagePurged as exc:
        return JobView(job, document, None, str(exc), reviews, shown)
    if document is None:
        return JobView(job, None, png, "The image as submitted: the model has not answered yet", reviews, shown)
    picture = result_overlay(png, document, job_id=job_id, classes=classes, reviewed=reviewed)
    note = (f"The annotations of {shown.reviewer}'s review (score {shown.score}, {shown.decision})"
            if shown else "The model's annotations")
    return JobView(job, document, picture, note, reviews, shown)


def _line(review: Review, reviewer: str) -> ReviewLine:
    corrections = review.corrections or {}
    return ReviewLine(
        id=review.id, reviewer=reviewer, reviewer_key_id=review.reviewer_key_id, dimension=review.dimension.value,
        score=review.score, decision=review.decision.value, comment=review.comment, revision=review.revision,
        created_at=review.created_at, amended_at=review.amended_at,
        corrects_annotations=corrections.get("annotations") is not None, corrected_label=corrections.get("label"),
        corrected_interpretation=corrections.get("interpretation"),
        next_phases=review.next_phases, group=review.group_name)
