"""Geometry: the model's 0..scale coordinates to COCO shapes in ORIGINAL-image pixels.

The model saw a resized copy of the image (longest side <= ``profile.image.max_side``), but
its coordinates are normalised to that copy's width and height, and the resize keeps the
content's relative positions, so ``x_px = x / scale * W_orig`` needs no resize factor.

Pixel values are kept as integer hundredths of a pixel internally: the returned numbers are
rounded to 2 decimals, every point stays inside [0, W] x [0, H] after rounding, ``x + w``
never exceeds W, and the shoelace area is exact for the polygon that is returned.
All functions here are pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.pipeline.profile import Profile
from shared.schemas.results import Detection, Keypoints, Segmentation

Annotation = Detection | Segmentation | Keypoints
Box = tuple[float, float, float, float]  # COCO [x, y, w, h]

_CENTS = 100  # returned pixel values carry 2 decimals


@dataclass(frozen=True)
class ImageGeometry:
    """The original image's size in pixels and the model's coordinate scale."""

    width: int
    height: int
    scale: int = 1000

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1 or self.scale < 1:
            raise ValueError(f"invalid geometry {self.width}x{self.height} at scale {self.scale}")




class _Drop(Exception):
    """Internal: the shape is unusable; the message is the reason reported."""


# --- points --------------------------------------------------------------------------------


def to_pixels(x: float, y: float, geometry: ImageGeometry) -> tuple[float, float]:
    """Model coordinates -> original-image pixels, clamped into [0, W] x [0, H] (unrounded)."""
    px = x / geometry.scale * geometry.width
    py = y / geometry.scale * geometry.height
    return min(max(px, 0.0), float(geometry.width)), min(max(py, 0.0), float(geometry.height))


def to_model(x_px: float, y_px: float, geometry: ImageGeometry) -> tuple[float, float]:
    """Original-image pixels -> model coordinates (the inverse of ``to_pixels`` inside the image)."""
    return x_px / geometry.width * geometry.scale, y_px / geometry.height * geometry.scale


def _cents(value: float, size: int, scale: int) -> int:
    """A model coordinate as clamped integer hundredths of a pixel along an axis of ``size``."""
    return min(max(round(value / scale * size * _CENTS), 0), size * _CENTS)


def _point(x: float, y: float, g: ImageGeometry) -> tuple[int, int]:
    return _cents(x, g.width, g.scale), _cents(y, g.height, g.scale)


def _box_from_cents(x1: int, y1: int, x2: int, y2: int) -> Box:
    return (x1 / _CENTS, y1 / _CENTS, (x2 - x1) / _CENTS, (y2 - y1) / _CENTS)


# --- shapes --------------------------------------------------------------------------------


def coco_bbox(box: Sequence[float], geometry: ImageGeometry) -> Box:
    """[x1, y1, x2, y2] in model coordinates (any corner order) -> COCO [x, y, w, h] pixels.

    Raises ``ValueError`` when the clamped box has no area (w <= 0 or h <= 0 at 0.01 px).
    """
    if len(box) != 4:
        raise ValueError("a box has 4 numbers")
    (ax, ay), (bx, by) = _point(box[0], box[1], geometry), _point(box[2], box[3], geometry)
    x1, x2, y1, y2 = min(ax, bx), max(ax, bx), min(ay, by), max(ay, by)
    if x2 <= x1 or y2 <= y1:
        raise ValueError("zero-area box after clamping to the image")
    return _box_from_cents(x1, y1, x2, y2)


@dataclass(frozen=True)
class Polygon:
    """A cleaned polygon in pixels: flat COCO points, its area and bounding box."""

    flat: list[float]
    area: float
    bbox: Box


def coco_polygon(points: Sequence[Sequence[float]], geometry: ImageGeometry) -> Polygon:
    """[[x, y], ...] in model coordinates -> flat pixel polygon with shoelace area.

    Consecutive repeats (after clamping and rounding) are removed, the closing repeat of the
    first point too. Raises ``ValueError`` for fewer than 3 distinct points or zero area.
    """
    cents: list[tuple[int, int]] = []
    for point in points:
        p = _point(point[0], point[1], geometry)
        if not cents or cents[-1] != p:
            cents.append(p)
    while len(cents) > 1 and cents[-1] == cents[0]:
        cents.pop()
    if len(set(cents)) < 3:
        raise ValueError("polygon has fewer than 3 distinct points")
    # Shoelace on integer hundredths is exact; the sign only tells the winding direction.
    twice = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(cents, cents[1:] + cents[:1], strict=True))
    if twice == 0:
        raise ValueError("polygon has zero area")
    xs, ys = [x for x, _ in cents], [y for _, y in cents]
    return Polygon(
        flat=[v / _CENTS for p in cents for v in p],
        area=round(abs(twice) / 2 / _CENTS**2, 2),
        bbox=_box_from_cents(min(xs), min(ys), max(xs), max(ys)),
    )


def coco_keypoints(points: Sequence[Sequence[float]], geometry: ImageGeometry) -> tuple[list[float], int]:
    """[[x, y, v], ...] -> (flat [x, y, v, ...] in pixels, number of labelled points).

    COCO's v: 0 not labelled, 1 labelled but not visible, 2 visible. Any other v is read as
    0, and a v=0 point is written as 0, 0, 0 as COCO requires.
    """
    flat: list[float] = []
    labelled = 0
    for point in points:
        v = point[2] if len(point) > 2 else 2
        if v not in (1, 2):
            flat += [0.0, 0.0, 0.0]
            continue
        x, y = _point(point[0], point[1], geometry)
        flat += [x / _CENTS, y / _CENTS, float(int(v))]
        labelled += 1
    return flat, labelled


def _keypoint_bbox(flat: Sequence[float]) -> Box:
    # Back to integer hundredths (exact: the values were made from them) so x + w stays <= W.
    xs = [round(flat[i] * _CENTS) for i in range(0, len(flat), 3) if flat[i + 2] > 0]
    ys = [round(flat[i + 1] * _CENTS) for i in range(0, len(flat), 3) if flat[i + 2] > 0]
    if not xs or max(xs) <= min(xs) or max(ys) <= min(ys):
        raise ValueError("zero-area box, and the labelled keypoints do not span an area")
    return _box_from_cents(min(xs), min(ys), max(xs), max(ys))


# --- annotations ---------------------------------------------------------------------------


def build_detections(
    items: Sequence[dict[str, Any]], geometry: ImageGeometry, profile: Profile
) -> tuple[list[Detection], list[str]]:
    """Detect items -> ``Detection`` models (ids 1..n) and the reasons items were dropped."""
    out: list[Detection] = []
    dropped: list[str] = []
    for index, item in enumerate(items, start=1):
        try:
            label, category = _category(item, profile)
            bbox = coco_bbox(item["bbox_2d"], geometry)
        except (_Drop, ValueError, KeyError, TypeError, IndexError) as exc:
            dropped.append(_reason(index, item, exc))
            continue
        out.append(Detection(id=len(out) + 1, label=label, category_id=category, bbox=bbox, score=None))
    return out, dropped


def build_segmentations(
    items: Sequence[dict[str, Any]], geometry: ImageGeometry, profile: Profile
) -> tuple[list[Segmentation], list[str]]:
    """Segment items -> ``Segmentation`` models; the box is the model's unless degenerate."""
    out: list[Segmentation] = []
    dropped: list[str] = []
    for index, item in enumerate(items, start=1):
        try:
            label, category = _category(item, profile)
            polygon = coco_polygon(item["mask"], geometry)
            bbox = _model_box_or(item, geometry, polygon.bbox)
        except (_Drop, ValueError, KeyError, TypeError, IndexError) as exc:
            dropped.append(_reason(index, item, exc))
            continue
        out.append(
            Segmentation(
                id=len(out) + 1,
                label=label,
                category_id=category,
                bbox=bbox,
                segmentation=[polygon.flat],
                area=polygon.area,
                score=None,
            )
        )
    return out, dropped


def build_keypoints(
    items: Sequence[dict[str, Any]], geometry: ImageGeometry, profile: Profile
) -> tuple[list[Keypoints], list[str]]:
    """Keypoint items -> ``Keypoints`` models; a degenerate box falls back to the points' box."""
    out: list[Keypoints] = []
    dropped: list[str] = []
    for index, item in enumerate(items, start=1):
        try:
            label, category = _category(item, profile)
            flat, labelled = coco_keypoints(item["keypoints"], geometry)
            try:
                bbox = coco_bbox(item["bbox_2d"], geometry)
            except (ValueError, KeyError):
                bbox = _keypoint_bbox(flat)
        except (_Drop, ValueError, KeyError, TypeError, IndexError) as exc:
            dropped.append(_reason(index, item, exc))
            continue
        out.append(
            Keypoints(
                id=len(out) + 1,
                label=label,
                category_id=category,
                bbox=bbox,
                keypoints=flat,
                num_keypoints=labelled,
            )
        )
    return out, dropped


def build_annotations(
    phase: str, items: Sequence[dict[str, Any]], geometry: ImageGeometry, profile: Profile
) -> tuple[list[Annotation], list[str]]:
    """Parsed items of ``phase`` (detect, segment, keypoints) -> result models and drop reasons.

    Drop reasons read ``item <n> (<label>): <why>``, n counting the parsed items from 1.
    """
    built: Sequence[Annotation]
    if phase == "detect":
        built, dropped = build_detections(items, geometry, profile)
    elif phase == "segment":
        built, dropped = build_segmentations(items, geometry, profile)
    elif phase == "keypoints":
        built, dropped = build_keypoints(items, geometry, profile)
    else:
        raise ValueError(f"phase {phase!r} has no annotations")
    return list(built), dropped


def _category(item: dict[str, Any], profile: Profile) -> tuple[str, int]:
    label = item["label"]
    try:
        return label, profile.category_id(label)
    except KeyError:
        raise _Drop(f"{label!r} is not a class of profile {profile.name}") from None


def _model_box_or(item: dict[str, Any], geometry: ImageGeometry, fallback: Box) -> Box:
    box = item.get("bbox_2d")
    if box is None:
        return fallback
    try:
        return coco_bbox(box, geometry)
    except ValueError:
        return fallback


def _reason(index: int, item: Any, exc: Exception) -> str:
    label = item.get("label") if isinstance(item, dict) else None
    why = f"missing {exc}" if isinstance(exc, KeyError) else str(exc) or type(exc).__name__
    return f"item {index} ({label}): {why}"


__all__ = [
    "Annotation",
    "Box",
    "ImageGeometry",
    "Polygon",
    "build_annotations",
    "build_detections",
    "build_keypoints",
    "build_segmentations",
    "coco_bbox",
    "coco_keypoints",
    "coco_polygon",
    "to_model",
    "to_pixels",
]
