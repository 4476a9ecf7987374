"""An evaluation: the stored results of the ground truth's jobs against the ground truth.

What is measured on which images (the ground truth may mix tasks, as the model card's test set
does: detection, segmentation and classification samples):

- Box mAP (``map50``, ``map75``) over the images that have at least one annotation with a
  ``bbox``. Ground truth: the annotations with a ``bbox``. Predictions: the result's
  ``detections`` and the boxes of its ``keypoints`` items (keypoints replace DETECT for their
  classes). An image with only a view label (a classification sample) or only polygons (a
  segmentation sample) is not a detection sample: its detections are not false positives.
- Mask mAP (``mask_map50``, ``mask_map75``) and Dice/IoU over the images that have at least one
  annotation with a polygon. Ground truth: the annotations with polygons. Predictions: the
  result's ``segmentations``. (A COCO annotation with both counts in both.)
- Classification accuracy over the images with a ``view_label``.
- Only the classes the ground truth declares in ``categories`` are evaluated; predictions of
  other classes are left out (as COCOeval does).
- A metric with nothing to measure it on is None (e.g. no annotations: no mAP).
- Only final results are measured: every job must have succeeded (``load_results``). A HITL job
  the reviewer rejected has succeeded with its later phases skipped: it is measured as it is
  (no detections or segmentations, so its ground-truth boxes and masks count as missed; its
  first-stage view label counts).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from importlib.metadata import version
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from shared.db.models import Job, JobStatus, Result
from shared.schemas.results import ResultDocument

from .classification import accuracy
from .detection import AveragePrecision, average_precision
from .errors import EvaluationError
from .geometry import check_geometry, check_image_sizes
from .ground_truth import GroundTruth, GTAnnotation
from .masks import area, dice_iou, empty, rasterise

_IN_CHUNK = 500  # ids per IN (...) query: well under SQLite's bound-parameter limit


class ClassMetrics(BaseModel):
    ap50: float | None = Field(description="box AP at IoU 0.50 (null: no ground-truth box of this class)")
    ap75: float | None = Field(description="box AP at IoU 0.75")
    mask_ap50: float | None = Field(description="mask AP at IoU 0.50 (null: no ground-truth polygon of this class)")
    mask_ap75: float | None = Field(description="mask AP at IoU 0.75")
    dice: float | None = Field(description="mean Dice over this class's (image, class) pairs; null: no pair")
    iou: float | None = Field(description="mean mask IoU over this class's (image, class) pairs")
    n_gt: int = Field(description="ground-truth boxes of this class")
    n_pred: int = Field(description="predicted boxes of this class on the images evaluated for boxes")
    n_gt_masks: int = Field(description="ground-truth annotations with polygons")
    n_pred_masks: int = Field(description="predicted segmentations on the images evaluated for masks")
    n_mask_pairs: int = Field(description="(image, class) pairs behind dice and iou")


class Metrics(BaseModel):
    map50: float | None = Field(description="box mAP at IoU 0.50: mean over classes with ground-truth boxes of the "
                                "101-point interpolated AP (pycocotools COCOeval, area 'all', 100 detections)")
    map75: float | None = Field(description="box mAP at IoU 0.75")
    mask_map50: float | None = Field(description="mask mAP at IoU 0.50 (null when no annotation has a polygon)")
    mask_map75: float | None = Field(description="mask mAP at IoU 0.75")
    dice: float | None = Field(description="mean Dice over (image, class) pairs where the prediction or the ground "
                               "truth has an annotation of the class, masks of a class merged per image; a pair "
                               "whose masks are both empty (predicted polygons covering no pixel) scores 0")
    iou: float | None = Field(description="mean mask IoU over the same pairs")
    classification_accuracy: float | None = Field(description="exact view-label match (null: no view labels)")
    classification_accuracy_ci: float | None = Field(description="view-label match ignoring case")
    n_images: int = Field(description="images (jobs) in the ground truth")
    n_detection_images: int = Field(description="images with at least one bbox (box mAP)")
    n_segmentation_images: int = Field(description="images with at least one polygon (mask mAP, Dice, IoU)")
    n_classification_images: int = Field(description="images with a view_label")
    n_gt_boxes: int
    n_pred_boxes: int
    n_gt_masks: int
    n_pred_masks: int
    n_mask_pairs: int
    per_class: dict[str, ClassMetrics] = Field(description="by class name, for each ground-truth category")
    model_revisions: list[str] = Field(description="model revisions of the evaluated results")
    pycocotools_version: str


# --- reading the results ---------------------------------------------------------------------


def _chunks(values: list[str], size: int = _IN_CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def load_results(session: Session, job_ids: list[str]) -> dict[str, ResultDocument]:
    """The result document of each job. Only a ``succeeded`` job's result is final: a job that is
    queued, running or awaiting review (a HITL job's first-stage result, its detections not run
    yet) has none yet, and a failed or canceled one will never have one (whatever it stored
    before). Raises ``EvaluationError``: ``unknown_jobs`` (``job_ids``) for ids that are no job
    (or a succeeded job without a stored result), else ``jobs_not_finished`` (``job_ids`` and
    ``jobs``: [{"id", "status"}]) for jobs in any other status than succeeded."""
    statuses: dict[str, JobStatus] = {}
    documents: dict[str, Any] = {}
    for chunk in _chunks(job_ids):
        rows = session.execute(
            select(Job.id, Job.status, Result.document)
            .outerjoin(Result, and_(Result.job_id == Job.id, Job.status == JobStatus.succeeded))
            .where(Job.id.in_(chunk)))
        for job_id, status, document in rows:
            statuses[job_id] = JobStatus(status)
            if document is not None:
                documents[job_id] = document
    no_job = [job for job in job_ids if job not in statuses]
    no_result = [job for job in job_ids if statuses.get(job) is JobStatus.succeeded and job not in documents]
    unfinished = [job for job in job_ids if job in statuses and statuses[job] is not JobStatus.succeeded]
    listed_unfinished = _listing([f"{job} ({statuses[job].value})" for job in unfinished])
    if no_job or no_result:
        missing = [job for job in job_ids if job in set(no_job) | set(no_result)]
        parts = []
        if no_job:
            parts.append(f"no such job: {_listing(no_job)}")
        if no_result:
            parts.append(f"succeeded without a stored result: {_listing(no_result)}")
        if unfinished:
            parts.append(f"besides, {len(unfinished)} job(s) have no final result yet: {listed_unfinished}")
        raise EvaluationError("unknown_jobs", f"{len(missing)} ground-truth image id(s) are not jobs with a result; "
                              + "; ".join(parts), job_ids=missing[:1000])
    if unfinished:
        raise EvaluationError(
            "jobs_not_finished", f"{len(unfinished)} ground-truth image(s) are jobs without a final result (only "
            f"succeeded jobs are evaluated: wait for them, or leave them out): {listed_unfinished}",
            job_ids=unfinished[:1000], jobs=[{"id": job, "status": statuses[job].value} for job in unfinished[:1000]])
    found: dict[str, ResultDocument] = {}
    for job_id in job_ids:
        try:
            found[job_id] = ResultDocument.model_validate(documents[job_id])
        except ValidationError as exc:
            raise EvaluationError("unreadable_result", f"the stored result of job {job_id} cannot be read "
                                  f"({exc.error_count()} schema errors)", job_ids=[job_id]) from exc
    return found


def _listing(values: list[str], limit: int = 10) -> str:
    return ", ".join(values[:limit]) + (f" and {len(values) - limit} more" if len(values) > limit else "")


# --- the metrics -----------------------------------------------------------------------------


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _score(value: float | None) -> float:
    return 1.0 if value is None else float(value)


def compute_metrics(gt: GroundTruth, documents: Mapping[str, ResultDocument]) -> Metrics:
    """The metrics of ``documents`` (by job id, one per ground-truth image) against ``gt``."""
    int_id = {job: n + 1 for n, job in enumerate(gt.job_ids)}  # pycocotools needs integer image ids
    sizes = {job: (documents[job].image.width, documents[job].image.height) for job in gt.job_ids}
    check_image_sizes(gt, sizes)
    check_geometry(gt, sizes)
    size = {job: (height, width) for job, (width, height) in sizes.items()}  # as pycocotools takes them
    categories = list(gt.category_names)
    declared = set(categories)
    by_image: dict[str, list[GTAnnotation]] = defaultdict(list)
    for ann in gt.annotations:
        by_image[ann.image_id].append(ann)
    det_jobs = [img.id for img in gt.images if any(a.bbox is not None for a in by_image[img.id])]
    seg_jobs = [img.id for img in gt.images if any(a.segmentation for a in by_image[img.id])]

    def coco_images(jobs: list[str]) -> list[dict[str, Any]]:
        return [{"id": int_id[j], "height": size[j][0], "width": size[j][1]} for j in jobs]

    # Boxes.
    gt_boxes: list[dict[str, Any]] = []
    dt_boxes: list[dict[str, Any]] = []
    for job in det_jobs:
        for ann in by_image[job]:
            if ann.bbox is None:
                continue
            x, y, w, h = ann.bbox
            gt_boxes.append({"id": len(gt_boxes) + 1, "image_id": int_id[job], "category_id": ann.category_id,
                             "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        doc = documents[job]
        predicted: list[tuple[int, tuple[float, float, float, float], float | None]] = [
            *((d.category_id, d.bbox, d.score) for d in doc.detections),
            *((k.category_id, k.bbox, None) for k in doc.keypoints)]
        for category, bbox, score in predicted:
            if category in declared:
                dt_boxes.append({"image_id": int_id[job], "category_id": category,
                                 "bbox": [float(v) for v in bbox], "score": _score(score)})
    boxes = average_precision(coco_images(det_jobs), categories, gt_boxes, dt_boxes, "bbox")

    # Masks: mask AP over instances, Dice/IoU over class-merged masks per image.
    gt_masks: list[dict[str, Any]] = []
    dt_masks: list[dict[str, Any]] = []
    pairs: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for job in seg_jobs:
        height, width = size[job]
        truth_polys: dict[int, list[list[float]]] = defaultdict(list)
        pred_polys: dict[int, list[list[float]]] = defaultdict(list)
        for ann in by_image[job]:
            if not ann.segmentation:
                continue
            truth_polys[ann.category_id].extend(ann.polygons)
            truth = rasterise(ann.polygons, height, width) or empty(height, width)
            gt_masks.append({"id": len(gt_masks) + 1, "image_id": int_id[job], "category_id": ann.category_id,
                             "segmentation": truth, "bbox": list(ann.box), "area": float(area(truth)), "iscrowd": 0})
        for seg in documents[job].segmentations:
            if seg.category_id not in declared:
                continue
            pred_polys[seg.category_id].extend(seg.segmentation)
            dt_masks.append({"image_id": int_id[job], "category_id": seg.category_id, "score": _score(seg.score),
                             "segmentation": rasterise(seg.segmentation, height, width) or empty(height, width)})
        for category in sorted(truth_polys.keys() | pred_polys.keys()):
            pairs[category].append(dice_iou(rasterise(pred_polys[category], height, width),
                                            rasterise(truth_polys[category], height, width)))
    masks = (average_precision(coco_images(seg_jobs), categories, gt_masks, dt_masks, "segm") if seg_jobs
             else AveragePrecision(ap50=dict.fromkeys(categories), ap75=dict.fromkeys(categories)))

    # Classification.
    labelled = [(img.view_label, c.label if (c := documents[img.id].classification) else None)
                for img in gt.images if img.view_label]
    acc = accuracy(labelled)

    def count(items: list[dict[str, Any]], category: int) -> int:
        return sum(1 for i in items if i["category_id"] == category)

    all_pairs = [p for category_pairs in pairs.values() for p in category_pairs]
    per_class = {
        name: ClassMetrics(
            ap50=boxes.ap50[cid], ap75=boxes.ap75[cid], mask_ap50=masks.ap50[cid], mask_ap75=masks.ap75[cid],
            dice=_mean([d for d, _ in pairs[cid]]), iou=_mean([i for _, i in pairs[cid]]),
            n_gt=count(gt_boxes, cid), n_pred=count(dt_boxes, cid), n_gt_masks=count(gt_masks, cid),
            n_pred_masks=count(dt_masks, cid), n_mask_pairs=len(pairs[cid]))
        for cid, name in gt.category_names.items()
    }
    return Metrics(
        map50=boxes.map50, map75=boxes.map75, mask_map50=masks.map50, mask_map75=masks.map75,
        dice=_mean([d for d, _ in all_pairs]), iou=_mean([i for _, i in all_pairs]),
        classification_accuracy=acc.exact, classification_accuracy_ci=acc.case_insensitive,
        n_images=len(gt.images), n_detection_images=len(det_jobs), n_segmentation_images=len(seg_jobs),
        n_classification_images=acc.n, n_gt_boxes=len(gt_boxes), n_pred_boxes=len(dt_boxes),
        n_gt_masks=len(gt_masks), n_pred_masks=len(dt_masks), n_mask_pairs=len(all_pairs),
        per_class=per_class,
        model_revisions=sorted({documents[job].model.revision for job in gt.job_ids}),
        pycocotools_version=version("pycocotools"),
    )


def evaluate(session: Session, gt: GroundTruth) -> Metrics:
    """Read the ground truth's jobs' results and measure them; raises ``EvaluationError``."""
    return compute_metrics(gt, load_results(session, gt.job_ids))
