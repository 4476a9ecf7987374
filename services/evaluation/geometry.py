"""What only the jobs' images can tell about a ground truth: its sizes and its geometry.

- ``image_size_mismatch``: an image's ``width``/``height``, where given, differ from the job's
  original image size (the result's ``image.width``/``image.height``).
- ``invalid_ground_truth`` (with ``errors``, as a malformed ground truth): an annotation whose
  ``bbox``, polygon point or labelled keypoint lies outside its job's image, or whose polygon
  has no area (fewer than 3 distinct points, all points on one line, or no pixel once
  rasterised: a sliver thinner than a pixel). A point is inside a W x H image when
  0 <= x <= W and 0 <= y <= H (COCO's pixel-edge convention, as reviewers' corrections and the
  pipeline's clamping use); a bbox [x, y, w, h] when x, y >= 0, x + w <= W and y + h <= H.
  Keypoints with v = 0 (not labelled) carry no position and are not checked.

A missed structure must not score as perfect: a polygon that covers nothing would make its mask
empty, and Dice/IoU of an empty truth against no prediction is meaningless.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import EvaluationError
from .ground_truth import MAX_ERRORS_SHOWN, GroundTruth, GTAnnotation, GTImage
from .masks import polygon_pixels

MAX_ERRORS = 100  # in the problem document's ``errors``


def _num(value: float) -> str:
    """A coordinate as written: 164 rather than 164.0, 1e+300 as such."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(float(value))


def _given_size(image: GTImage) -> str:
    if image.width is not None and image.height is not None:
        return f"{image.width}x{image.height}"
    return f"width {image.width}" if image.width is not None else f"height {image.height}"


def check_image_sizes(gt: GroundTruth, sizes: Mapping[str, tuple[int, int]]) -> None:
    """``sizes``: job id -> (width, height) of its original image. Raises
    ``image_size_mismatch`` for the first image whose given width or height differs."""
    for i, image in enumerate(gt.images):
        width, height = sizes[image.id]
        if (image.width is not None and image.width != width) or (image.height is not None and image.height != height):
            raise EvaluationError(
                "image_size_mismatch", f"ground_truth.images[{i}] (job {image.id}): the ground truth says "
                f"{_given_size(image)}, the job's image is {width}x{height} (ground-truth geometry must be in the "
                "original image's pixels)", job_id=image.id)


def _point_error(index: int, x: float, y: float, width: int, height: int) -> str | None:
    if 0 <= x <= width and 0 <= y <= height:
        return None
    return f"point {index} ({_num(x)}, {_num(y)}) is not inside the {width}x{height} image"


def _polygon_error(polygon: Sequence[float], width: int, height: int) -> str | None:
    xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    outside = np.flatnonzero((xy[:, 0] < 0) | (xy[:, 0] > width) | (xy[:, 1] < 0) | (xy[:, 1] > height))
    if outside.size:
        k = int(outside[0])
        return _point_error(k, float(xy[k, 0]), float(xy[k, 1]), width, height)
    if polygon_pixels(polygon, height, width) > 0:
        return None
    # No pixel: say why (a polygon with 3 distinct points off one line can still be a sliver).
    distinct = np.unique(xy, axis=0)
    if len(distinct) < 3:
        return f"has {len(distinct)} distinct point(s); a polygon needs at least 3 (it has no area)"
    d = distinct[1:] - distinct[0]
    if not np.any(d[0, 0] * d[1:, 1] - d[0, 1] * d[1:, 0]):
        return "has all its points on one line (it has no area)"
    return f"covers no pixel of the {width}x{height} image (thinner than a pixel once rasterised): it has no area"


def _annotation_errors(ann: GTAnnotation, width: int, height: int) -> list[tuple[str, str]]:
    """(where, message) for each fault of one annotation; where is relative to the annotation."""
    errors: list[tuple[str, str]] = []
    if ann.bbox is not None:
        x, y, w, h = ann.bbox
        if not (x >= 0 and y >= 0 and x + w <= width and y + h <= height):
            errors.append((".bbox", f"[{', '.join(_num(v) for v in ann.bbox)}] is not inside the "
                                    f"{width}x{height} image"))
    for j, polygon in enumerate(ann.polygons):
        if (error := _polygon_error(polygon, width, height)) is not None:
            errors.append((f".segmentation[{j}]", error))
    values = ann.keypoints or []
    for k in range(0, len(values), 3):
        if values[k + 2] == 0:
            continue
        if (error := _point_error(k // 3, values[k], values[k + 1], width, height)) is not None:
            errors.append((".keypoints", error))
            break
    return errors


def _named(ann: GTAnnotation) -> str:
    """" (id 7)" when the annotation has a short id to name it by, else ""."""
    ident: Any = ann.id
    if isinstance(ident, bool) or not isinstance(ident, int | str) or len(str(ident)) > 64:
        return ""
    return f" (id {ident!r})" if isinstance(ident, str) else f" (id {ident})"


def check_geometry(gt: GroundTruth, sizes: Mapping[str, tuple[int, int]]) -> None:
    """Raise ``invalid_ground_truth`` naming every annotation (index, and id when it has one)
    whose geometry does not fit its job's image (``sizes``: job id -> (width, height)), or
    whose polygon has no area."""
    errors: list[dict[str, str]] = []
    for i, ann in enumerate(gt.annotations):
        width, height = sizes[ann.image_id]
        for where, message in _annotation_errors(ann, width, height):
            errors.append({"loc": f"ground_truth.annotations[{i}]{where}",
                           "msg": f"annotation{_named(ann)} of job {ann.image_id}: {message}"})
    if not errors:
        return
    shown = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:MAX_ERRORS_SHOWN])
    more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
    raise EvaluationError("invalid_ground_truth", f"the ground truth's geometry does not fit its images: "
                          f"{shown}{more}", errors=errors[:MAX_ERRORS])
