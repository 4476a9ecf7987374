"""Dice and IoU of masks, rasterised with pycocotools.mask (run-length encoded, never a full
image array).

Per image and class, all polygons of that class are merged into one mask (prediction and
ground truth each); Dice = 2|P∩G| / (|P| + |G|), IoU = |P∩G| / |P∪G|.

Which pairs count, and the empty case: an (image, class) pair is scored only when the ground
truth or the prediction has at least one annotation of that class on that image (a class that
neither side mentions is no pair, not a perfect one). A pair whose two masks are nevertheless
both empty scores 0.0, not 1.0: the ground truth's polygons always cover pixels (a zero-area
one is refused), so an empty union means the prediction claimed the class with polygons that
cover nothing where the ground truth has none, a false positive, as mask AP counts it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

Rle = dict[str, Any]


def usable(polygon: Sequence[float]) -> bool:
    """At least three points, as x, y pairs (pycocotools reads a 4-number list as a box), all
    finite."""
    return len(polygon) >= 6 and len(polygon) % 2 == 0 and all(math.isfinite(v) for v in polygon)


def clamp(polygon: Sequence[float], height: int, width: int) -> list[float]:
    """The polygon with its points moved into the image. pycocotools clips too, but only after
    tracing every edge at 5x resolution: a point far outside (1e9) would cost that much work."""
    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    np.clip(xy[:, 0], 0, width, out=xy[:, 0])
    np.clip(xy[:, 1], 0, height, out=xy[:, 1])
    return [float(v) for v in xy.ravel()]


def rasterise(polygons: Sequence[Sequence[float]], height: int, width: int) -> Rle | None:
    """The union of the polygons as one RLE mask, clipped to the image; None when there is none."""
    kept = [clamp(p, height, width) for p in polygons if usable(p)]
    if not kept:
        return None
    rles = mask_utils.frPyObjects(kept, height, width)
    merged: Rle = mask_utils.merge(rles) if len(rles) > 1 else rles[0]
    return merged


def polygon_pixels(polygon: Sequence[float], height: int, width: int) -> int:
    """Pixels one polygon of finite coordinates covers once rasterised in a ``width`` x
    ``height`` image (0 for fewer than 3 points). Meant for polygons already inside the image:
    they are not clamped."""
    if len(polygon) < 6 or len(polygon) % 2:
        return 0
    rles = mask_utils.frPyObjects([list(polygon)], height, width)
    return int(mask_utils.area(rles[0]))


def empty(height: int, width: int) -> Rle:
    rle: Rle = mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    return rle


def area(rle: Rle | None) -> int:
    return 0 if rle is None else int(mask_utils.area(rle))


def dice_iou(prediction: Rle | None, truth: Rle | None) -> tuple[float, float]:
    """(Dice, IoU) of two masks of the same image; (0.0, 0.0) when both are empty (see the
    module's docstring: a pair is only formed when one side has an annotation of the class)."""
    p, g = area(prediction), area(truth)
    if p + g == 0:
        return 0.0, 0.0
    inter = 0
    if prediction is not None and truth is not None and p and g:
        inter = int(mask_utils.area(mask_utils.merge([prediction, truth], intersect=True)))
    return 2.0 * inter / (p + g), inter / (p + g - inter)
