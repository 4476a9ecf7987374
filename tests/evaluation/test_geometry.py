"""What only the job's image can tell about the ground truth: its size, geometry inside the
image (COCO's pixel-edge convention, as reviewers' corrections), polygons with an area; and
Dice/IoU not scoring empty masks as perfect."""

from __future__ import annotations

from typing import Any

import pytest

from services.evaluation import EvaluationError, compute_metrics, parse_ground_truth

from .builders import PROFILE, box_ann, coco, document, mask_ann, rect


def refused(gt: dict[str, Any], docs: dict[str, Any], code: str = "invalid_ground_truth") -> EvaluationError:
    with pytest.raises(EvaluationError) as info:
        compute_metrics(parse_ground_truth(gt, PROFILE), docs)
    assert info.value.code == code, info.value.detail
    return info.value


SMALL = {"a": document(width=64, height=48)}

# The 96x96 sliver of the report: three points with area (about 37 square pixels), but no
# pixel centre inside, so it rasterises to nothing.
SLIVER = [50.4, 85.25, 49.54, 0.48, 50.4, 4.9]


@pytest.mark.parametrize(("bbox", "shown"), [
    ([164, 148, 50, 50], "[164, 148, 50, 50] is not inside the 64x48 image"),
    ([-1000, -1000, 10, 10], "[-1000, -1000, 10, 10] is not inside the 64x48 image"),
    ([0, 0, 1e300, 1e300], "[0, 0, 1e+300, 1e+300] is not inside the 64x48 image"),
    ([60, 0, 4.5, 10], "[60, 0, 4.5, 10] is not inside the 64x48 image"),
])
def test_a_box_outside_the_image_is_refused_naming_the_annotation(bbox: list[float], shown: str) -> None:
    gt = coco(["a"], [box_ann("a", "NT", [0, 0, 10, 10]), box_ann("a", "NT", bbox)], ["NT"])
    error = refused(gt, SMALL)
    assert error.extra["errors"] == [{"loc": "ground_truth.annotations[1].bbox",
                                      "msg": f"annotation (id 2) of job a: {shown}"}]
    assert f"ground_truth.annotations[1].bbox: annotation (id 2) of job a: {shown}" in error.detail


def test_a_box_up_to_the_right_and_bottom_edges_is_inside() -> None:
    gt = coco(["a"], [box_ann("a", "NT", [0, 0, 64, 48]), mask_ann("a", "head", [rect(32, 24, 32, 24)])],
              ["NT", "head"])
    m = compute_metrics(parse_ground_truth(gt, PROFILE), {"a": document(
        width=64, height=48, boxes=[("NT", (0, 0, 64, 48), 0.9)], masks=[("head", [rect(32, 24, 32, 24)], 0.9)])})
    assert (m.map50, m.dice) == (pytest.approx(1.0), 1.0)


def test_polygon_points_and_keypoints_outside_the_image_are_refused() -> None:
    gt = coco(["a"], [
        mask_ann("a", "head", [rect(0, 0, 10, 10), [10, 10, 70, 10, 10, 40]]),
        {**box_ann("a", "NT", [0, 0, 5, 5]), "keypoints": [1, 1, 2, 65, 2, 1]},
        {**box_ann("a", "NT", [0, 0, 5, 5]), "keypoints": [-5, -5, 0, 64, 48, 2]},  # v = 0: no position
    ], ["head", "NT"])
    error = refused(gt, SMALL)
    assert error.extra["errors"] == [
        {"loc": "ground_truth.annotations[0].segmentation[1]",
         "msg": "annotation (id 1) of job a: point 1 (70, 10) is not inside the 64x48 image"},
        {"loc": "ground_truth.annotations[1].keypoints",
         "msg": "annotation (id 2) of job a: point 1 (65, 2) is not inside the 64x48 image"},
    ]


def test_every_fault_is_listed_and_annotations_without_an_id_are_named_by_index() -> None:
    gt = coco(["a"], [box_ann("a", "NT", [100, 0, 5, 5]) for _ in range(7)], ["NT"])
    for ann in gt["annotations"]:
        del ann["id"]
    error = refused(gt, SMALL)
    assert len(error.extra["errors"]) == 7
    assert error.extra["errors"][6] == {"loc": "ground_truth.annotations[6].bbox",
                                        "msg": "annotation of job a: [100, 0, 5, 5] is not inside the 64x48 image"}
    assert error.detail.endswith("(and 2 more)")


@pytest.mark.parametrize(("polygon", "why"), [
    ([10, 10, 20, 10, 30, 10], "has all its points on one line (it has no area)"),
    ([10, 10, 20, 20, 10, 10, 20, 20], "has 2 distinct point(s); a polygon needs at least 3 (it has no area)"),
    ([5, 5, 5, 5, 5, 5], "has 1 distinct point(s)"),
    (SLIVER, "covers no pixel of the 96x96 image (thinner than a pixel once rasterised): it has no area"),
    (rect(10, 10, 0.4, 0.4), "covers no pixel of the 96x96 image"),
])
def test_a_polygon_without_area_is_refused(polygon: list[float], why: str) -> None:
    gt = coco(["a"], [mask_ann("a", "head", [rect(0, 0, 10, 10)]), mask_ann("a", "liver", [rect(0, 0, 5, 5), polygon])],
              ["head", "liver"])
    error = refused(gt, {"a": document(width=96, height=96)})
    assert [e["loc"] for e in error.extra["errors"]] == ["ground_truth.annotations[1].segmentation[1]"]
    assert why in error.extra["errors"][0]["msg"]


def test_a_zero_sized_box_is_refused_naming_the_annotation() -> None:
    gt = coco(["a"], [box_ann("a", "NT", [0, 0, 10, 10]), box_ann("a", "NT", [5, 5, 0, 3])], ["NT"])
    with pytest.raises(EvaluationError) as info:
        parse_ground_truth(gt, PROFILE)
    assert info.value.code == "invalid_ground_truth"
    assert "ground_truth.annotations[1]: bbox is [x, y, width, height] with width and height above 0" in (
        info.value.detail)


def test_malformed_keypoints_are_refused() -> None:
    for keypoints, why in (([1, 2], "3 numbers per point"), ([1, 2, 5], "visibility 5")):
        gt = coco(["a"], [{**box_ann("a", "NT", [0, 0, 5, 5]), "keypoints": keypoints}], ["NT"])
        with pytest.raises(EvaluationError) as info:
            parse_ground_truth(gt, PROFILE)
        assert info.value.code == "invalid_ground_truth" and why in info.value.detail
        assert "ground_truth.annotations[0].keypoints" in info.value.detail


@pytest.mark.parametrize(("image", "says"), [
    ({"id": "a", "width": 99999999999999999999999}, "the ground truth says width 99999999999999999999999, "
                                                     "the job's image is 64x48"),
    ({"id": "a", "height": 50}, "the ground truth says height 50, the job's image is 64x48"),
    ({"id": "a", "width": 64, "height": 50}, "the ground truth says 64x50, the job's image is 64x48"),
])
def test_image_size_mismatch_says_only_what_was_given(image: dict[str, Any], says: str) -> None:
    gt = coco([image], [box_ann("a", "NT", [0, 0, 5, 5])], ["NT"])
    detail = refused(gt, SMALL, "image_size_mismatch").detail
    assert says in detail and "None" not in detail
    assert detail.startswith("ground_truth.images[0] (job a):")


# --- Dice/IoU: empty is not perfect ------------------------------------------------------------


def test_a_predicted_polygon_that_covers_nothing_is_not_a_perfect_match() -> None:
    # The ground truth has no liver on this image; the model claims one with a polygon that
    # rasterises to nothing: a false positive (mask AP counts it so), not Dice 1.
    gt = coco(["a"], [mask_ann("a", "head", [rect(0, 0, 40, 40)])], ["head", "liver"])
    docs = {"a": document(width=96, height=96, masks=[("head", [rect(0, 0, 40, 40)], 0.9),
                                                      ("liver", [SLIVER], 0.8)])}
    m = compute_metrics(parse_ground_truth(gt, PROFILE), docs)
    assert (m.per_class["liver"].dice, m.per_class["liver"].iou, m.per_class["liver"].n_mask_pairs) == (0.0, 0.0, 1)
    assert (m.per_class["head"].dice, m.per_class["head"].iou) == (1.0, 1.0)
    assert (m.dice, m.iou, m.n_mask_pairs) == (0.5, 0.5, 2)


def test_a_predicted_segmentation_without_polygons_is_not_a_perfect_match() -> None:
    gt = coco(["a"], [mask_ann("a", "head", [rect(0, 0, 40, 40)])], ["head", "liver"])
    docs = {"a": document(width=96, height=96, masks=[("head", [rect(0, 0, 40, 40)], 0.9), ("liver", [], 0.8)])}
    m = compute_metrics(parse_ground_truth(gt, PROFILE), docs)
    assert (m.per_class["liver"].dice, m.per_class["liver"].iou) == (0.0, 0.0)


def test_a_class_neither_side_mentions_is_no_pair() -> None:
    gt = coco(["a"], [mask_ann("a", "head", [rect(0, 0, 40, 40)])], ["head", "liver"])
    m = compute_metrics(parse_ground_truth(gt, PROFILE),
                        {"a": document(width=96, height=96, masks=[("head", [rect(0, 0, 40, 40)], 0.9)])})
    assert (m.per_class["liver"].dice, m.per_class["liver"].n_mask_pairs, m.n_mask_pairs) == (None, 0, 1)


def test_the_reported_sliver_as_ground_truth_is_refused_not_scored() -> None:
    # Before: mask_map50 0.0 but dice 1.0 / iou 1.0 for the same polygon on both sides.
    gt = coco(["a"], [mask_ann("a", "head", [SLIVER])], ["head"])
    error = refused(gt, {"a": document(width=96, height=96, masks=[("head", [SLIVER], 0.9)])})
    assert error.extra["errors"][0]["loc"] == "ground_truth.annotations[0].segmentation[0]"
