"""Evaluations: a COCO ground truth whose image ids are job ids, measured against those jobs'
results (box and mask mAP with pycocotools, Dice/IoU, classification accuracy), and stored."""

from .errors import EvaluationError
from .ground_truth import MAX_ANNOTATIONS, MAX_IMAGES, GroundTruth, ground_truth_json_schema, parse_ground_truth
from .run import ClassMetrics, Metrics, compute_metrics, evaluate, load_results
from .store import EvaluationPage, create_evaluation, get_evaluation, list_evaluations

__all__ = [
    "MAX_ANNOTATIONS",
    "MAX_IMAGES",
    "ClassMetrics",
    "EvaluationError",
    "EvaluationPage",
    "GroundTruth",
    "Metrics",
    "compute_metrics",
    "create_evaluation",
    "evaluate",
    "get_evaluation",
    "ground_truth_json_schema",
    "list_evaluations",
    "load_results",
    "parse_ground_truth",
]
