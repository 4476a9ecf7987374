"""Corrections: their shape (pydantic) and what the profile and the image decide, with a
detail that names the offending item."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from services.reviews import Corrections, InvalidReview, check_corrections
from shared.db.models import ReviewDimension

from .helpers import PROFILE

W, H = 48, 32
INTERP, ANNOT = ReviewDimension.interpretation, ReviewDimension.annotation


def _check(data: dict[str, Any], dimension: ReviewDimension) -> None:
    check_corrections(Corrections.model_validate(data), dimension=dimension, profile=PROFILE, width=W, height=H)


def test_valid_corrections_of_each_dimension_pass() -> None:
    _check({"label": "BPD_PLANE", "interpretation": {"imaging_plane": "transthalamic", "gestational_age": "20w"}},
           INTERP)
    _check({"annotations": [
        {"label": "Brain", "bbox": [0, 0, W, H]},  # the whole image: edges are inside
        {"label": "NT", "bbox": [1.5, 2, 10, 4], "segmentation": [[1.5, 2, 11.5, 2, 11.5, 6, 1.5, 6]]},
        {"label": "CRL_KP", "bbox": [5, 5, 10, 10], "keypoints": [5, 5, 2, 15, 15, 1, 0, 0, 0]},
    ]}, ANNOT)
    _check({}, INTERP)
    _check({"annotations": []}, ANNOT)


@pytest.mark.parametrize(("data", "dimension", "detail"), [
    ({"label": "NOT_A_VIEW"}, INTERP, "corrections.label 'NOT_A_VIEW' is not a view label"),
    ({"interpretation": {"imaging_plane": "x", "mood": "y"}}, INTERP,
     "corrections.interpretation has unknown fields ['mood']"),
    ({"annotations": []}, INTERP, "corrections.annotations belong to an annotation review"),
    ({"label": "BPD_PLANE"}, ANNOT, "belong to an interpretation review"),
    ({"annotations": [{"label": "Brain", "bbox": [0, 0, 5, 5]}, {"label": "unicorn", "bbox": [0, 0, 5, 5]}]}, ANNOT,
     "corrections.annotations[1].label 'unicorn' is not a class"),
    ({"annotations": [{"label": "Brain", "bbox": [1, 1, 0, 5]}]}, ANNOT,
     "corrections.annotations[0].bbox [1.0, 1.0, 0.0, 5.0] needs a positive width and height"),
    ({"annotations": [{"label": "Brain", "bbox": [40, 1, 8.5, 5]}]}, ANNOT,
     "corrections.annotations[0].bbox [40.0, 1.0, 8.5, 5.0] is not inside the 48x32 image"),
    ({"annotations": [{"label": "Brain", "bbox": [-1, 1, 5, 5]}]}, ANNOT, "is not inside the 48x32 image"),
    ({"annotations": [{"label": "NT", "bbox": [1, 1, 5, 5], "segmentation": [[1, 1, 2, 2, 3]]}]}, ANNOT,
     "corrections.annotations[0].segmentation[0] has an odd number of values (5)"),
    ({"annotations": [{"label": "NT", "bbox": [1, 1, 5, 5], "segmentation": [[1, 1, 2, 2]]}]}, ANNOT,
     "corrections.annotations[0].segmentation[0] has 2 points; a polygon needs at least 3"),
    ({"annotations": [{"label": "NT", "bbox": [1, 1, 5, 5],
                       "segmentation": [[1, 1, 2, 2, 3, 3], [1, 1, 2, 40, 3, 3]]}]}, ANNOT,
     "corrections.annotations[0].segmentation[1] point 1 (2.0, 40.0) is not inside the 48x32 image"),
    ({"annotations": [{"label": "NT", "bbox": [1, 1, 5, 5], "keypoints": [1, 1, 2]}]}, ANNOT,
     "corrections.annotations[0].keypoints: 'NT' is not a keypoint class"),
    ({"annotations": [{"label": "CRL_KP", "bbox": [1, 1, 5, 5], "keypoints": [1, 1, 2, 3]}]}, ANNOT,
     "3 values per point; it has 4 values"),
    ({"annotations": [{"label": "CRL_KP", "bbox": [1, 1, 5, 5], "keypoints": [1, 1, 3]}]}, ANNOT,
     "point 0 has visibility 3.0; it must be 0, 1 or 2"),
    ({"annotations": [{"label": "CRL_KP", "bbox": [1, 1, 5, 5], "keypoints": [1, 1, 2, 49, 1, 2]}]}, ANNOT,
     "corrections.annotations[0].keypoints point 1 (49.0, 1.0) is not inside the 48x32 image"),
])
def test_invalid_corrections_are_refused_with_a_precise_detail(data: dict[str, Any], dimension: ReviewDimension,
                                                                 detail: str) -> None:
    with pytest.raises(InvalidReview) as raised:
        _check(data, dimension)
    assert detail in raised.value.detail
    assert raised.value.status == 422


@pytest.mark.parametrize("data", [
    {"labels": "BPD_PLANE"},  # unknown key: a typo must not be stored silently
    {"annotations": [{"label": "Brain", "bbox": [1, 2, 3]}]},
    {"annotations": [{"label": "Brain", "bbox": [1, 2, 3, float("nan")]}]},
    {"annotations": [{"label": "Brain", "bbox": [1, 2, 3, float("inf")]}]},
    {"annotations": [{"label": "", "bbox": [1, 2, 3, 4]}]},
    {"interpretation": {"imaging_plane": 3}},
])
def test_malformed_corrections_do_not_parse(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Corrections.model_validate(data)
