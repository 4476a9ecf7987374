"""Validation of the COCO ground truth: every refusal names its reason and place."""

from __future__ import annotations

from typing import Any

import pytest

from services.evaluation import MAX_IMAGES, EvaluationError, parse_ground_truth

from .builders import PROFILE, box_ann, category, cid, coco, mask_ann, rect


def refused(gt: Any, code: str) -> EvaluationError:
    with pytest.raises(EvaluationError) as info:
        parse_ground_truth(gt, PROFILE)
    assert info.value.code == code, info.value.detail
    return info.value


def valid() -> dict[str, Any]:
    return coco([{"id": "a", "width": 100, "height": 80, "file_name": "a.png", "view_label": "BPD_PLANE"}],
                [box_ann("a", "NT", [1, 2, 3, 4]), mask_ann("a", "head", [rect(0, 0, 5, 5)])], ["NT", "head"])


def test_a_valid_ground_truth_parses() -> None:
    gt = parse_ground_truth(valid(), PROFILE)
    assert gt.job_ids == ["a"]
    assert gt.category_names == {cid("NT"): "NT", cid("head"): "head"}
    assert gt.annotations[1].box == (0, 0, 5, 5)  # a polygon-only annotation's extent


@pytest.mark.parametrize(("change", "where"), [
    (lambda g: g.update(images="nope"), "ground_truth.images"),
    (lambda g: g.pop("images"), "ground_truth.images: Field required"),
    (lambda g: g["images"][0].update(id=7), "ground_truth.images[0].id"),
    (lambda g: g["annotations"][0].update(bbox=[1, 2, 3]), "ground_truth.annotations[0].bbox"),
    (lambda g: g["annotations"][0].update(bbox=[1, 2, "3", 4]), "ground_truth.annotations[0].bbox[2]"),
    (lambda g: g["annotations"][0].update(bbox=[1, 2, 0, 4]), "width and height above 0"),
    (lambda g: g["annotations"][0].update(bbox=None), "needs a bbox or a segmentation"),
    (lambda g: g["annotations"][1].update(segmentation=[[1, 2, 3, 4]]), "ground_truth.annotations[1].segmentation[0]"),
    (lambda g: g["annotations"][1].update(segmentation=[[1, 2, 3, 4, 5, 6, 7]]), "even number"),
    (lambda g: g["annotations"][1].update(segmentation={"size": [1, 1], "counts": "0"}), "RLE"),
    (lambda g: g["annotations"][0].update(iscrowd=1), "iscrowd=1"),
    (lambda g: g["annotations"][0].update(category_id="1"), "ground_truth.annotations[0].category_id"),
    (lambda g: g["images"][0].update(label="BPD_PLANE"), "view_label"),
    (lambda g: g["images"][0].update(width=0), "ground_truth.images[0].width"),
    (lambda g: g["images"].append({"id": "a"}), "more than once: 'a'"),
    (lambda g: g["annotations"].append(box_ann("zzz", "NT", [1, 1, 1, 1])), "'zzz' is not among"),
    (lambda g: g["categories"].append(category("NT")), "category ids appear more than once"),
])
def test_malformed_coco_is_refused_precisely(change: Any, where: str) -> None:
    gt = valid()
    change(gt)
    error = refused(gt, "invalid_ground_truth")
    assert where in error.detail


def test_not_an_object() -> None:
    refused([1, 2], "invalid_ground_truth")


def test_too_many_images() -> None:
    gt = coco([f"job-{i}" for i in range(MAX_IMAGES + 1)], [], [])
    assert "at most" in refused(gt, "invalid_ground_truth").detail


@pytest.mark.parametrize("gt", [
    {"images": [], "annotations": [], "categories": []},
    coco(["a", "b"], [], ["NT"]),  # no annotations, no view labels
])
def test_empty_ground_truth(gt: dict[str, Any]) -> None:
    refused(gt, "empty_ground_truth")


def test_unknown_category_id() -> None:
    gt = valid()
    gt["categories"].append({"id": len(PROFILE.classes) + 1, "name": "spleen"})
    assert "ids run from 1 to" in refused(gt, "unknown_category").detail


def test_category_name_that_does_not_match_its_id() -> None:
    gt = valid()
    gt["categories"][0]["name"] = "NB"  # NT's id, NB's name
    detail = refused(gt, "unknown_category").detail
    assert "'NT'" in detail and f"'NB' has id {cid('NB')}" in detail


def test_unknown_category_name() -> None:
    gt = valid()
    gt["categories"][0]["name"] = "spleen"
    assert "not a class of the profile" in refused(gt, "unknown_category").detail


def test_annotation_of_an_undeclared_category() -> None:
    gt = valid()
    gt["annotations"].append(box_ann("a", "liver", [1, 1, 1, 1]))
    assert "not among the ground truth's categories" in refused(gt, "unknown_category").detail


def test_view_labels_are_checked_ignoring_case() -> None:
    gt = valid()
    gt["images"][0]["view_label"] = "bpd_plane"
    parse_ground_truth(gt, PROFILE)
    gt["images"][0]["view_label"] = "BPD_PLAIN"
    assert "BPD_PLAIN" in refused(gt, "unknown_view_label").detail


def test_total_polygon_size_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.evaluation import ground_truth

    monkeypatch.setattr(ground_truth, "MAX_TOTAL_COORDS", 4)
    assert "at most 4 are" in refused(valid(), "invalid_ground_truth").detail
