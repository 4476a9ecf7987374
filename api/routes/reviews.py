"""``/v1``: sonographer reviews of a job (create, amend, list) and the reviewers' queue.

The HITL gate: an interpretation review of a job awaiting review resumes it (then the job id
is enqueued, after the commit) or finishes it; see ``services.reviews.hitl``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from services.jobs import publish_jobs
from services.queue import publisher
from services.reviews import (
    Corrections,
    QueueEntry,
    ReviewInput,
    ReviewRecord,
    Text,
    amend_review,
    get_own_review,
    list_reviews,
    review_queue,
    submit_review,
)
from shared.db.models import JobMode, Review, ReviewDecision, ReviewDimension, Role

from ..context import Caller
from ..deps import Ctx, JobId, require, set_audit_job
from ..problems import PROBLEM
from ..schemas import JobOut

router = APIRouter(tags=["reviews"])

ReviewerOnly = Annotated[Caller, Depends(require(Role.reviewer))]
ReviewReader = Annotated[Caller, Depends(require(Role.reviewer, Role.qa))]
Phase = Literal["detect", "segment", "keypoints"]


def _whole_number(value: object) -> object:
    # JSON Schema's "integer" includes 2.0, so it is a score; true and "2" are not.
    if isinstance(value, bool | str):
        raise ValueError("score must be a number: 0, 1, 2 or 3")
    return value


# Field first: after a BeforeValidator its bounds would not reach the OpenAPI document.
Score = Annotated[int, Field(ge=0, le=3, description="1 acceptable, 2 minor issues, 3 major errors, 0 not assessable"),
                  BeforeValidator(_whole_number)]

WRITE_ERRORS: dict[int | str, dict[str, Any]] = {404: PROBLEM, 409: PROBLEM}


# --- the edge: request and response models ----------------------------------------------------


class ReviewContent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score: Score
    decision: ReviewDecision
    comment: Text | None = Field(None, max_length=4000)
    corrections: Corrections | None = None
    next_phases: list[Phase] | None = Field(
        None, max_length=3, json_schema_extra={"uniqueItems": True},  # a repeat is refused by the service
        description="HITL, interpretation review of a job awaiting review: the later phases to run; [] finishes "
                    "the job without them")
    group: Text | None = Field(None, max_length=128, description="HITL: the routing group to detect/segment")

    def as_input(self) -> ReviewInput:
        return ReviewInput(score=self.score, decision=self.decision, comment=self.comment,
                           corrections=self.corrections,
                           next_phases=list(self.next_phases) if self.next_phases is not None else None,
                           group=self.group)


class ReviewIn(ReviewContent):
    dimension: ReviewDimension


class Reviewer(BaseModel):
    key_id: str
    name: str


class ReviewVersionOut(BaseModel):
    """A superseded version of a review."""

    revision: int
    score: int
    decision: ReviewDecision
    comment: str | None
    corrections: dict[str, Any] | None
    next_phases: list[str] | None
    group: str | None
    created_at: datetime
    superseded_at: datetime


class ReviewOut(BaseModel):
    id: str
    job_id: str
    reviewer: Reviewer
    dimension: ReviewDimension
    score: int
    decision: ReviewDecision
    comment: str | None
    corrections: dict[str, Any] | None
    next_phases: list[str] | None
    group: str | None
    job_mode: JobMode
    model_revision: str | None
    revision: int
    created_at: datetime
    amended_at: datetime | None
    history: list[ReviewVersionOut] = Field(description="superseded versions, oldest first")

    @classmethod
    def of(cls, review: Review, reviewer_name: str, *, with_history: bool = True) -> ReviewOut:
        history = [
            ReviewVersionOut(revision=v.revision, score=v.score, decision=v.decision, comment=v.comment,
                             corrections=v.corrections, next_phases=v.next_phases, group=v.group_name,
                             created_at=v.created_at, superseded_at=v.superseded_at)
            for v in (review.history if with_history else [])
        ]
        return cls(
            id=review.id, job_id=review.job_id, reviewer=Reviewer(key_id=review.reviewer_key_id, name=reviewer_name),
            dimension=review.dimension, score=review.score, decision=review.decision, comment=review.comment,
            corrections=review.corrections, next_phases=review.next_phases, group=review.group_name,
            job_mode=review.job_mode, model_revision=review.model_revision, revision=review.revision,
            created_at=review.created_at, amended_at=review.amended_at, history=history,
        )

    @classmethod
    def of_record(cls, record: ReviewRecord) -> ReviewOut:
        return cls.of(record.review, record.reviewer_name)


class ReviewList(BaseModel):
    items: list[ReviewOut]
    next_cursor: str | None = Field(None, description="always null: a job's reviews come in one page")


class QueueItem(JobOut):
    pending: list[ReviewDimension] = Field(description="the dimensions still to be reviewed")

    @classmethod
    def of_entry(cls, entry: QueueEntry) -> QueueItem:
        return cls(**JobOut.of(entry.job).model_dump(), pending=entry.pending)


class QueuePageOut(BaseModel):
    items: list[QueueItem]
    next_cursor: str | None


# --- routes ------------------------------------------------------------------------------------


def _audit(request: Request, review: ReviewOut, **extra: object) -> None:
    set_audit_job(request, review.job_id, review_id=review.id, dimension=review.dimension.value, score=review.score,
                  decision=review.decision.value, revision=review.revision, **extra)


@router.post("/v1/jobs/{job_id}/reviews", status_code=201, response_model=ReviewOut, responses=WRITE_ERRORS)
def create(request: Request, response: Response, ctx: Ctx, caller: ReviewerOnly, job_id: JobId,
           body: ReviewIn) -> ReviewOut:
    """Score one dimension of a job (once per reviewer and dimension; ``PUT`` amends). On a HITL
    job awaiting review, the interpretation review chooses what follows: accept/correct with
    ``next_phases`` resumes it, ``[]`` or ``reject`` finishes it without later phases."""
    with ctx.sm.begin() as session:
        submitted = submit_review(session, job_id=job_id, reviewer_key_id=caller.key_id, dimension=body.dimension,
                                  data=body.as_input(), profile=ctx.profile)
        out = ReviewOut.of(submitted.review, caller.name, with_history=False)
    hitl: dict[str, object] = {}
    if submitted.gate is not None:
        hitl = {"hitl": "resumed" if submitted.resumed else "finished", "next_phases": submitted.gate.phases,
                "group": submitted.gate.group}
    if submitted.resumed:
        publish_jobs(ctx.sm, publisher(ctx.celery), [job_id])  # after the commit; refused: the sweeper sends it
    _audit(request, out, **hitl)
    response.headers["Location"] = f"/v1/jobs/{job_id}/reviews/{out.dimension.value}"
    return out


@router.get("/v1/jobs/{job_id}/reviews", response_model=ReviewList, responses={404: PROBLEM})
def list_(ctx: Ctx, caller: ReviewReader, job_id: JobId) -> ReviewList:
    """Every reviewer's current review of the job, oldest first, each with its history."""
    with ctx.sm() as session:
        return ReviewList(items=[ReviewOut.of_record(r) for r in list_reviews(session, job_id)])


@router.get("/v1/jobs/{job_id}/reviews/{dimension}", response_model=ReviewOut,
            responses={404: PROBLEM})
def read_own(ctx: Ctx, caller: ReviewerOnly, job_id: JobId, dimension: ReviewDimension) -> ReviewOut:
    """The caller's own review of this dimension (where ``Location`` points)."""
    with ctx.sm() as session:
        return ReviewOut.of_record(get_own_review(session, job_id, caller.key_id, dimension))


@router.put("/v1/jobs/{job_id}/reviews/{dimension}", response_model=ReviewOut, responses=WRITE_ERRORS)
def amend(request: Request, ctx: Ctx, caller: ReviewerOnly, job_id: JobId, dimension: ReviewDimension,
          body: ReviewContent) -> ReviewOut:
    """Amend the caller's review of this dimension; the previous version is kept in its history.
    ``next_phases`` and ``group`` record what the job ran: repeat them or leave them out."""
    with ctx.sm.begin() as session:
        review = amend_review(session, job_id=job_id, reviewer_key_id=caller.key_id, dimension=dimension,
                              data=body.as_input(), profile=ctx.profile)
        out = ReviewOut.of(review, caller.name)
    _audit(request, out, amended=True)
    return out


@router.get("/v1/reviews/queue", response_model=QueuePageOut)
def queue(ctx: Ctx, caller: ReviewerOnly, limit: Annotated[int, Query(ge=1, le=500)] = 50,
          cursor: Annotated[str | None, Query(max_length=512)] = None) -> QueuePageOut:
    """HITL jobs waiting for this reviewer, oldest first: awaiting their interpretation review
    (the choice of later phases), or succeeded and waiting for an annotation review."""
    with ctx.sm() as session:
        page = review_queue(session, reviewer_key_id=caller.key_id, limit=limit, cursor=cursor)
        return QueuePageOut(items=[QueueItem.of_entry(e) for e in page.items], next_cursor=page.next_cursor)
