"""``/v1/evaluations`` (qa): measure jobs' results against a COCO ground truth, read them back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from services.evaluation import (
    MAX_ANNOTATIONS,
    MAX_IMAGES,
    EvaluationError,
    Metrics,
    create_evaluation,
    evaluate,
    get_evaluation,
    ground_truth_json_schema,
    list_evaluations,
    parse_ground_truth,
)
from shared.db.models import Evaluation, Role

from ..context import AppContext, Caller
from ..deps import Ctx, EvaluationId, require
from ..problems import PROBLEM, Problem

router = APIRouter(tags=["evaluations"])

QA = Annotated[Caller, Depends(require(Role.qa))]

GROUND_TRUTH_DOC = f"""A COCO dataset whose image ids are job ids (strings). Geometry is COCO in the
ORIGINAL image's pixels (as in the results): `bbox` = [x, y, width, height], polygons flat
[x1, y1, x2, y2, ...].

- `images`: `[{{"id": "<job id>", "width"?, "height"?, "view_label"?}}]`, 1 to {MAX_IMAGES}. Every id must
  be a job that has succeeded (queued, running, awaiting_review, failed and canceled jobs are
  refused: `jobs_not_finished`). `width`/`height`, if given, must equal the job's image size.
  **`view_label`** is the image's classification ground truth (a view label of the profile,
  e.g. `BPD_PLANE`); images without one are not counted in the classification accuracy.
- `categories`: `[{{"id", "name"}}]`: profile classes, `id` = the class's 1-based index in the
  profile's class list (the results' `category_id`). Only these classes are evaluated.
- `annotations`: `[{{"image_id", "category_id", "bbox"?, "segmentation"?}}]`, at most {MAX_ANNOTATIONS}; each
  has a bbox or polygons (`[[x1, y1, ...], ...]`, 3 points or more; RLE and `iscrowd: 1` are refused).
  Boxes, polygon points and labelled keypoints must lie inside the job's image (0 <= x <= width,
  0 <= y <= height) and polygons must have an area (cover at least one pixel), else
  `invalid_ground_truth` names the annotation.

What is measured where: box mAP (ground truth: the annotations with a `bbox`; predictions: the
results' detections and keypoint boxes) over the images with at least one `bbox`; mask mAP,
Dice and IoU (the annotations with polygons against the results' segmentations) over the images
with at least one polygon; classification accuracy over the images with a `view_label`. So a
classification-only or segmentation-only sample adds no false positive boxes. A metric with
nothing to measure is null."""


class EvaluationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255, pattern=r"^[^\x00]+$", description="no NUL characters")
    # Validated by services.evaluation (precise 422 details), documented with its schema here.
    ground_truth: Annotated[dict[str, Any], WithJsonSchema(
        {**ground_truth_json_schema(), "title": "Ground Truth", "description": GROUND_TRUTH_DOC})]


class EvaluationOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    metrics: Metrics

    @classmethod
    def of(cls, row: Evaluation) -> EvaluationOut:
        return cls(id=row.id, name=row.name, created_at=row.created_at, metrics=Metrics.model_validate(row.metrics))


class EvaluationPage(BaseModel):
    items: list[EvaluationOut]
    next_cursor: str | None


def _read(ctx: AppContext, evaluation_id: str) -> EvaluationOut:
    with ctx.sm() as session:
        row = get_evaluation(session, evaluation_id)
        if row is None:
            raise Problem(404, "evaluation_not_found", f"evaluation {evaluation_id} not found")
        return EvaluationOut.of(row)


@router.post("/v1/evaluations", status_code=201, response_model=EvaluationOut,
             responses={413: PROBLEM})
def create(request: Request, response: Response, ctx: Ctx, caller: QA, body: EvaluationIn) -> EvaluationOut:
    """Measure the results of the ground truth's jobs (pycocotools mAP at IoU 0.50 and 0.75,
    Dice/IoU, view-label accuracy) and store the evaluation. A ground truth that is malformed,
    empty, names a class or view label the profile does not know, an image id that is not a
    job (``unknown_jobs``) or a job that has not succeeded (``jobs_not_finished``), or has geometry
    outside its image, is a 422 saying which."""
    try:
        gt = parse_ground_truth(body.ground_truth, ctx.profile)
        with ctx.sm() as session:
            metrics = evaluate(session, gt)
    except EvaluationError as exc:
        raise Problem(422, exc.code, exc.detail, **exc.extra) from exc
    with ctx.sm.begin() as session:
        evaluation_id = create_evaluation(session, name=body.name, api_key_id=caller.key_id,
                                          ground_truth=body.ground_truth, metrics=metrics).id
    request.state.audit_detail = {**(getattr(request.state, "audit_detail", None) or {}),
                                  "evaluation_id": evaluation_id}
    response.headers["Location"] = f"/v1/evaluations/{evaluation_id}"
    return _read(ctx, evaluation_id)


@router.get("/v1/evaluations", response_model=EvaluationPage)
def list_(
    ctx: Ctx,
    caller: QA,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> EvaluationPage:
    """Evaluations newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    with ctx.sm() as session:
        page = list_evaluations(session, limit=limit, cursor=cursor)
        return EvaluationPage(items=[EvaluationOut.of(row) for row in page.items], next_cursor=page.next_cursor)


@router.get("/v1/evaluations/{evaluation_id}", response_model=EvaluationOut,
            responses={404: PROBLEM})
def read(ctx: Ctx, caller: QA, evaluation_id: EvaluationId) -> EvaluationOut:
    """The evaluation as ``POST`` answered it."""
    return _read(ctx, evaluation_id)
