"""A reviewer's corrections: their shape (pydantic, checked at the edge) and what only the
profile and the image can tell (checked here, with a precise detail naming the offending item).

Geometry is COCO, as in the result document: pixels of the ORIGINAL image, origin top-left,
``bbox`` = [x, y, w, h], flat polygons [x1, y1, x2, y2, ...], keypoints [x, y, v, ...].
A point is inside the image when 0 <= x <= width and 0 <= y <= height (the pipeline clamps
model output into the same closed range).

Which dimension may correct what: an interpretation review corrects the view ``label`` and
the ``interpretation`` fields (the HITL first stage); an annotation review corrects the
``annotations``. Mixing them would make corrections unusable for per-dimension evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from services.pipeline.profile import Profile
from shared.db.models import ReviewDimension

from .errors import InvalidReview

MAX_ANNOTATIONS = 500
MAX_POLYGONS = 50
MAX_POLYGON_VALUES = 2 * 1000  # 1000 points
MAX_KEYPOINT_VALUES = 3 * 100
MAX_FIELD_CHARS = 4000
KEYPOINT_VISIBILITY = frozenset({0, 1, 2})  # COCO: not labelled, labelled but hidden, visible


# PostgreSQL text and JSONB cannot hold U+0000: refuse it at the edge (a pattern, so that the
# OpenAPI document says so too) rather than fail at INSERT. Keys of ``interpretation`` need no
# pattern: only the profile's field names are accepted.
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00]*$")]


class _Shape(BaseModel):
    # NaN and infinities are not coordinates; unknown keys are typos, not data.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class AnnotationCorrection(_Shape):
    """One corrected structure: a box, optionally a polygon mask or keypoints."""

    label: Text = Field(min_length=1, max_length=128, description="one of the profile's classes")
    bbox: tuple[float, float, float, float] = Field(description="[x, y, w, h] in pixels, inside the image")
    segmentation: list[Annotated[list[float], Field(max_length=MAX_POLYGON_VALUES)]] | None = Field(
        None, max_length=MAX_POLYGONS, description="polygons [[x1, y1, x2, y2, ...]], at least 3 points each")
    keypoints: list[float] | None = Field(
        None, max_length=MAX_KEYPOINT_VALUES, description="[x, y, v, ...] (v: 0, 1 or 2), keypoint classes only")


class Corrections(_Shape):
    """What the reviewer says the output should have been; every member optional."""

    label: Text | None = Field(None, max_length=128, description="the corrected view label (interpretation)")
    interpretation: dict[str, Annotated[Text, Field(max_length=MAX_FIELD_CHARS)]] | None = Field(
        None, description="corrected interpretation fields (interpretation)")
    annotations: list[AnnotationCorrection] | None = Field(
        None, max_length=MAX_ANNOTATIONS, description="the corrected annotations (annotation)")


def check_corrections(corrections: Corrections, *, dimension: ReviewDimension, profile: Profile,
                      width: int, height: int) -> None:
    """Raise ``InvalidReview`` for the first thing that does not fit the dimension, the
    profile's vocabulary or the ``width`` x ``height`` image."""
    if dimension is ReviewDimension.interpretation:
        if corrections.annotations is not None:
            raise InvalidReview("corrections.annotations belong to an annotation review, not an interpretation review")
        _check_label(corrections.label, profile)
        _check_interpretation(corrections.interpretation, profile)
    else:
        if corrections.label is not None or corrections.interpretation is not None:
            raise InvalidReview("corrections.label and corrections.interpretation belong to an interpretation "
                                "review, not an annotation review")
        for i, item in enumerate(corrections.annotations or []):
            _check_annotation(f"corrections.annotations[{i}]", item, profile, width, height)


def _check_label(label: str | None, profile: Profile) -> None:
    if label is not None and label not in profile.view_labels:
        raise InvalidReview(f"corrections.label {label!r} is not a view label of profile {profile.name}; "
                            f"choose one of: {', '.join(profile.view_labels)}")


def _check_interpretation(fields: dict[str, str] | None, profile: Profile) -> None:
    if fields is None:
        return
    unknown = sorted(set(fields) - set(profile.interpretation_fields))
    if unknown:
        raise InvalidReview(f"corrections.interpretation has unknown fields {unknown}; "
                            f"the fields are: {', '.join(profile.interpretation_fields)}")


def _check_annotation(where: str, item: AnnotationCorrection, profile: Profile, width: int, height: int) -> None:
    if item.label not in profile.classes:
        raise InvalidReview(f"{where}.label {item.label!r} is not a class of profile {profile.name}")
    x, y, w, h = item.bbox
    if w <= 0 or h <= 0:
        raise InvalidReview(f"{where}.bbox {list(item.bbox)} needs a positive width and height")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise InvalidReview(f"{where}.bbox {list(item.bbox)} is not inside the {width}x{height} image")
    for j, polygon in enumerate(item.segmentation or []):
        _check_polygon(f"{where}.segmentation[{j}]", polygon, width, height)
    if item.keypoints is not None:
        _check_keypoints(f"{where}.keypoints", item.label, item.keypoints, profile, width, height)


def _check_polygon(where: str, values: Sequence[float], width: int, height: int) -> None:
    if len(values) % 2:
        raise InvalidReview(f"{where} has an odd number of values ({len(values)}): it must be [x1, y1, x2, y2, ...]")
    if len(values) < 6:
        raise InvalidReview(f"{where} has {len(values) // 2} points; a polygon needs at least 3")
    for k in range(0, len(values), 2):
        _check_point(f"{where}", k // 2, values[k], values[k + 1], width, height)


def _check_keypoints(where: str, label: str, values: Sequence[float], profile: Profile,
                     width: int, height: int) -> None:
    if label not in profile.keypoint_classes:
        raise InvalidReview(f"{where}: {label!r} is not a keypoint class; keypoints are for: "
                            f"{', '.join(profile.keypoint_classes)}")
    if not values or len(values) % 3:
        raise InvalidReview(f"{where} must be [x, y, v, ...] with 3 values per point; it has {len(values)} values")
    for k in range(0, len(values), 3):
        visibility = values[k + 2]
        if visibility not in KEYPOINT_VISIBILITY:
            raise InvalidReview(f"{where} point {k // 3} has visibility {visibility}; it must be 0, 1 or 2")
        _check_point(where, k // 3, values[k], values[k + 1], width, height)


def _check_point(where: str, index: int, x: float, y: float, width: int, height: int) -> None:
    if not (0 <= x <= width and 0 <= y <= height):
        raise InvalidReview(f"{where} point {index} ({x}, {y}) is not inside the {width}x{height} image")
