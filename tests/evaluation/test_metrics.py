"""The metrics, without a database: mAP against hand computations and against pycocotools'
own ``COCOeval.summarize``, Dice/IoU against hand-computed rectangle areas, classification
accuracy, the empty cases, and pycocotools' printing kept out of stdout."""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from services.evaluation import Metrics, compute_metrics, parse_ground_truth
from services.evaluation.detection import average_precision, quiet
from shared.schemas.results import ResultDocument

from .builders import PROFILE, box_ann, cid, coco, document, mask_ann, rect

# AP of one class with 2 ground-truth boxes and, by score, a hit, a false positive, a hit:
# recall/precision 0.5/1, 0.5/0.5, 1/(2/3). Interpolated precision is 1 for the 51 recall
# points 0.00..0.50 and 2/3 for the 50 points 0.51..1.00: AP = (51 + 50 * 2/3) / 101.
AP_HIT_MISS_HIT = (51 + 50 * 2 / 3) / 101


def metrics(gt: dict[str, Any], documents: dict[str, ResultDocument]) -> Metrics:
    return compute_metrics(parse_ground_truth(gt, PROFILE), documents)


def cocoeval_stats(gt: dict[str, Any], documents: dict[str, ResultDocument]) -> np.ndarray:
    """pycocotools' own numbers (``summarize``'s stats) on the same data, built independently:
    integer image ids, every detection of the documents as a result."""
    ids = {img["id"]: n + 1 for n, img in enumerate(gt["images"])}
    dataset = {
        "images": [{"id": ids[img["id"]], "width": documents[img["id"]].image.width,
                    "height": documents[img["id"]].image.height} for img in gt["images"]],
        "categories": gt["categories"],
        "annotations": [{**a, "image_id": ids[a["image_id"]], "area": a["bbox"][2] * a["bbox"][3]}
                        for a in gt["annotations"]],
    }
    results = [{"image_id": ids[job], "category_id": d.category_id, "bbox": list(d.bbox),
                "score": 1.0 if d.score is None else d.score}
               for job, doc in documents.items() for d in doc.detections]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


# --- mAP -------------------------------------------------------------------------------------


def test_iou_064_counts_at_050_not_at_075() -> None:
    # GT [0,0,100,100], prediction [0,0,100,64]: IoU = 6400 / 10000 = 0.64.
    gt = coco(["job-a"], [box_ann("job-a", "head", [0, 0, 100, 100])], ["head"])
    docs = {"job-a": document(boxes=[("head", (0, 0, 100, 64), 0.9)])}
    m = metrics(gt, docs)
    assert m.map50 == pytest.approx(1.0)
    assert m.map75 == pytest.approx(0.0)
    assert m.per_class["head"].ap50 == pytest.approx(1.0) and m.per_class["head"].ap75 == pytest.approx(0.0)
    assert (m.n_images, m.n_gt_boxes, m.n_pred_boxes) == (1, 1, 1)
    stats = cocoeval_stats(gt, docs)
    assert (m.map50, m.map75) == pytest.approx((stats[1], stats[2]))


def test_two_classes_with_a_false_positive_by_hand_and_by_pycocotools() -> None:
    gt = coco(
        ["job-1", "job-2"],
        [box_ann("job-1", "NT", [0, 0, 50, 50]), box_ann("job-2", "NT", [10, 10, 40, 40]),
         box_ann("job-1", "NB", [100, 100, 100, 100])],
        ["NT", "NB", "head"],  # head: declared, predicted, no ground truth -> no AP, not in the mean
    )
    docs = {
        "job-1": document(boxes=[("NT", (0, 0, 50, 50), 0.9), ("NB", (100, 100, 100, 64), 0.6),
                                 ("head", (5, 5, 20, 20), 0.99)]),
        "job-2": document(boxes=[("NT", (60, 60, 20, 20), 0.8), ("NT", (10, 10, 40, 40), 0.7)]),
    }
    m = metrics(gt, docs)
    nt, nb, head = m.per_class["NT"], m.per_class["NB"], m.per_class["head"]
    assert nt.ap50 == pytest.approx(AP_HIT_MISS_HIT) and nt.ap75 == pytest.approx(AP_HIT_MISS_HIT)
    assert nb.ap50 == pytest.approx(1.0) and nb.ap75 == pytest.approx(0.0)
    assert head.ap50 is None and head.ap75 is None and head.n_gt == 0 and head.n_pred == 1
    assert (nt.n_gt, nt.n_pred, nb.n_gt, nb.n_pred) == (2, 3, 1, 1)
    assert m.map50 == pytest.approx((AP_HIT_MISS_HIT + 1.0) / 2)
    assert m.map75 == pytest.approx(AP_HIT_MISS_HIT / 2)
    stats = cocoeval_stats(gt, docs)
    assert (m.map50, m.map75) == pytest.approx((stats[1], stats[2]), abs=1e-12)
    assert (m.n_gt_boxes, m.n_pred_boxes) == (3, 5)


def test_missing_score_counts_as_one() -> None:
    # Unscored box (1.0) is a hit, scored 0.9 box a false positive: precision 1 at full recall.
    gt = coco(["j"], [box_ann("j", "NT", [0, 0, 50, 50])], ["NT"])
    m = metrics(gt, {"j": document(boxes=[("NT", (100, 100, 20, 20), 0.9), ("NT", (0, 0, 50, 50), None)])})
    assert m.map50 == pytest.approx(1.0)


def test_predictions_outside_the_declared_categories_and_on_unannotated_images_are_left_out() -> None:
    gt = coco(["j", "k"], [box_ann("j", "NT", [0, 0, 50, 50])], ["NT"])
    gt["images"][1]["view_label"] = "BPD_PLANE"  # a classification sample: its boxes are not false positives
    docs = {"j": document(boxes=[("NT", (0, 0, 50, 50), 0.5), ("NB", (0, 0, 9, 9), 0.9)]),
            "k": document(boxes=[("NT", (0, 0, 50, 50), 0.9)], label="BPD_PLANE")}
    m = metrics(gt, docs)
    assert m.map50 == pytest.approx(1.0) and m.map75 == pytest.approx(1.0)
    assert (m.n_detection_images, m.n_classification_images, m.n_pred_boxes) == (1, 1, 1)
    assert set(m.per_class) == {"NT"}


def test_average_precision_matches_summarize_on_many_random_boxes() -> None:
    rng = np.random.default_rng(7)
    images = [{"id": i, "width": 300, "height": 300} for i in range(1, 21)]
    gt: list[dict[str, Any]] = []
    dt: list[dict[str, Any]] = []
    for img in images:
        for _ in range(int(rng.integers(0, 4))):
            x, y, w, h = (float(v) for v in rng.uniform(0, 150, 4) + np.array([0, 0, 10, 10]))
            category = int(rng.integers(1, 4))
            gt.append({"id": len(gt) + 1, "image_id": img["id"], "category_id": category, "bbox": [x, y, w, h],
                       "area": w * h, "iscrowd": 0})
            jitter = rng.normal(0, 6, 4)
            dt.append({"image_id": img["id"], "category_id": category, "score": float(rng.uniform()),
                       "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1), max(h + jitter[3], 1)]})
        for _ in range(int(rng.integers(0, 3))):  # false positives
            dt.append({"image_id": img["id"], "category_id": int(rng.integers(1, 4)), "score": float(rng.uniform()),
                       "bbox": [float(v) for v in rng.uniform(0, 200, 4)]})
    ap = average_precision(images, [1, 2, 3], gt, dt, "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)],
                           "annotations": [dict(a) for a in gt]}
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes([dict(d) for d in dt]), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert 0 < evaluator.stats[1] < 1
    assert (ap.map50, ap.map75) == pytest.approx((evaluator.stats[1], evaluator.stats[2]), abs=1e-12)


# --- Dice and IoU ----------------------------------------------------------------------------


def test_dice_and_iou_by_hand_on_rectangles() -> None:
    gt = coco(
        ["img-1", "img-2"],
        [
            # head: two 10x10 squares merged (200 px); the prediction is one 30x10 rectangle over both
            mask_ann("img-1", "head", [rect(0, 0, 10, 10)]),
            mask_ann("img-1", "head", [rect(20, 0, 10, 10)]),
            mask_ann("img-1", "abdomen", [rect(0, 50, 50, 50)]),  # missed: Dice 0, IoU 0
            mask_ann("img-2", "head", [rect(0, 0, 40, 40)]),  # exact: 1.0
        ],
        ["head", "abdomen", "stomach", "thorax"],
    )
    docs = {
        "img-1": document(width=100, height=100, masks=[("head", [rect(0, 0, 30, 10)], 0.8),
                                                        ("thorax", [rect(60, 0, 20, 20)], 0.7),  # no GT: 0
                                                        # zero area, no GT: both masks empty, a false positive: 0
                                                        ("stomach", [[10, 10, 20, 10, 30, 10]], 0.6)]),
        "img-2": document(width=100, height=100, masks=[("head", [rect(0, 0, 20, 40), rect(20, 0, 20, 40)], None)]),
    }
    m = metrics(gt, docs)
    head_dice, head_iou = 2 * 200 / (200 + 300), 200 / 300
    assert m.per_class["head"].dice == pytest.approx((head_dice + 1.0) / 2)
    assert m.per_class["head"].iou == pytest.approx((head_iou + 1.0) / 2)
    assert (m.per_class["abdomen"].dice, m.per_class["abdomen"].iou) == (0.0, 0.0)
    assert (m.per_class["thorax"].dice, m.per_class["thorax"].iou) == (0.0, 0.0)
    assert (m.per_class["stomach"].dice, m.per_class["stomach"].iou) == (0.0, 0.0)
    assert m.n_mask_pairs == 5
    assert m.dice == pytest.approx((head_dice + 0 + 0 + 0 + 1.0) / 5)
    assert m.iou == pytest.approx((head_iou + 0 + 0 + 0 + 1.0) / 5)
    assert (m.n_segmentation_images, m.n_gt_masks, m.n_pred_masks) == (2, 4, 4)
    # mask AP is computed as well (exact masks on img-2 make head's AP positive)
    assert m.mask_map50 is not None and m.per_class["head"].mask_ap50 is not None
    assert m.per_class["head"].mask_ap50 > 0


def test_mask_ap_equals_pycocotools_segm_on_the_same_polygons() -> None:
    gt = coco(["a"], [mask_ann("a", "head", [rect(0, 0, 100, 100)]), mask_ann("a", "liver", [rect(120, 0, 50, 50)])],
              ["head", "liver"])
    # head: 100x64 inside 100x100 (IoU 0.64); liver: exact
    docs = {"a": document(masks=[("head", [rect(0, 0, 100, 64)], 0.9), ("liver", [rect(120, 0, 50, 50)], 0.8)])}
    m = metrics(gt, docs)
    assert m.per_class["head"].mask_ap50 == pytest.approx(1.0) and m.per_class["head"].mask_ap75 == 0.0
    assert m.per_class["liver"].mask_ap75 == pytest.approx(1.0)
    assert (m.mask_map50, m.mask_map75) == pytest.approx((1.0, 0.5))
    assert m.per_class["head"].dice == pytest.approx(2 * 6400 / (6400 + 10000))


def test_no_segmentation_ground_truth_means_no_mask_metrics() -> None:
    gt = coco(["a"], [box_ann("a", "head", [0, 0, 10, 10])], ["head"])
    m = metrics(gt, {"a": document(masks=[("head", [rect(0, 0, 10, 10)], 0.9)])})
    assert (m.mask_map50, m.mask_map75, m.dice, m.iou, m.n_segmentation_images) == (None, None, None, None, 0)
    assert m.classification_accuracy is None


# --- classification --------------------------------------------------------------------------


def test_classification_accuracy_exact_and_case_insensitive() -> None:
    labelled = {"a": ("BPD_PLANE", "BPD_PLANE"), "b": ("BPD_PLANE", "bpd_plane"), "c": ("FL_PLANE", "Aorta"),
                "d": ("head", None)}
    gt = coco([{"id": j, "view_label": truth} for j, (truth, _) in labelled.items()], [], [])
    m = metrics(gt, {j: document(label=predicted) for j, (_, predicted) in labelled.items()})
    assert m.classification_accuracy == pytest.approx(1 / 4)
    assert m.classification_accuracy_ci == pytest.approx(2 / 4)
    assert (m.n_images, m.n_classification_images, m.map50, m.dice) == (4, 4, None, None)


# --- edge cases ------------------------------------------------------------------------------


def test_no_predictions_at_all_gives_zeros() -> None:
    gt = coco([{"id": "a", "view_label": "head"}],
              [box_ann("a", "NT", [0, 0, 50, 50]), mask_ann("a", "head", [rect(0, 0, 30, 30)])], ["NT", "head"])
    m = metrics(gt, {"a": document()})
    assert (m.map50, m.map75, m.mask_map50, m.mask_map75) == (0.0, 0.0, 0.0, 0.0)
    assert (m.dice, m.iou, m.classification_accuracy, m.classification_accuracy_ci) == (0.0, 0.0, 0.0, 0.0)
    assert (m.n_pred_boxes, m.n_pred_masks) == (0, 0)
    assert m.per_class["NT"].ap50 == 0.0 and m.per_class["head"].mask_ap50 == 0.0
    assert m.per_class["head"].ap50 is None  # a polygon-only annotation is not a box


def test_degenerate_predicted_polygons_do_not_crash() -> None:
    gt = coco(["a"], [mask_ann("a", "head", [rect(0, 0, 30, 30)])], ["head"])
    m = metrics(gt, {"a": document(masks=[("head", [[1, 1, 2, 2]], 0.9), ("head", [], 0.5)])})
    assert (m.dice, m.mask_map50, m.n_pred_masks) == (0.0, 0.0, 2)


# --- pycocotools' printing -------------------------------------------------------------------


def test_pycocotools_printing_does_not_reach_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    gt = coco(["a"], [box_ann("a", "head", [0, 0, 100, 100]), mask_ann("a", "liver", [rect(0, 0, 20, 20)])],
              ["head", "liver"])
    stdout = sys.stdout
    metrics(gt, {"a": document(boxes=[("head", (0, 0, 100, 64), 0.9)], masks=[("liver", [rect(0, 0, 20, 20)], 1.0)])})
    assert sys.stdout is stdout
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_quiet_restores_stdout_after_an_error() -> None:
    stdout = sys.stdout
    with pytest.raises(RuntimeError), quiet():
        print("swallowed")
        raise RuntimeError("boom")
    assert sys.stdout is stdout
    assert cid("head") == PROFILE.classes.index("head") + 1


def test_predicted_points_far_outside_the_image_are_clamped_not_traced() -> None:
    # pycocotools traces every edge at 5x resolution before clipping: 1e9 would take forever.
    # (Ground-truth points outside the image are refused: see test_geometry.)
    gt = coco(["a"], [mask_ann("a", "head", [rect(0, 0, 100, 100)])], ["head"])
    m = metrics(gt, {"a": document(width=100, height=100, masks=[("head", [rect(-1e9, -1e9, 2e9, 2e9)], 0.9)])})
    assert (m.dice, m.iou) == (1.0, 1.0)
    assert m.mask_map50 == pytest.approx(1.0)
