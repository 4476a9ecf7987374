"""Average precision with pycocotools' COCOeval, read from its precision array.

AP of a class at an IoU threshold is the mean of the 101-point interpolated precision
(``eval['precision'][t, :, k, a, m]``) at area range 'all' and 100 detections per image;
classes without ground truth (precision -1) have no AP and are left out of the mean (mAP), as
``COCOeval.summarize`` does. ``summarize`` itself is not called: it only prints.

pycocotools prints progress to stdout (``createIndex``, ``loadRes``, ``evaluate``,
``accumulate``): every call runs inside ``quiet()``, which sends it to a buffer. Because
``redirect_stdout`` swaps the process-wide ``sys.stdout``, calls are serialised by a lock (two
threads swapping it in turn could leave it pointing at a dead buffer).
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IouType = Literal["bbox", "segm"]
IOU_THRESHOLDS = (0.5, 0.75)
MAX_DETS = 100

_PYCOCOTOOLS = threading.Lock()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Run pycocotools with its printing kept out of stdout (and out of the logs)."""
    with _PYCOCOTOOLS, contextlib.redirect_stdout(io.StringIO()):
        yield


@dataclass(frozen=True)
class AveragePrecision:
    """AP per category id at IoU 0.50 and 0.75 (None: no ground truth of that class), and the
    means over the classes that have ground truth (None when none has)."""

    ap50: dict[int, float | None]
    ap75: dict[int, float | None]

    @staticmethod
    def _mean(values: dict[int, float | None]) -> float | None:
        present = [v for v in values.values() if v is not None]
        return float(np.mean(present)) if present else None

    @property
    def map50(self) -> float | None:
        return self._mean(self.ap50)

    @property
    def map75(self) -> float | None:
        return self._mean(self.ap75)


def average_precision(
    images: list[dict[str, Any]],
    category_ids: list[int],
    gt: list[dict[str, Any]],
    dt: list[dict[str, Any]],
    iou_type: IouType = "bbox",
) -> AveragePrecision:
    """COCOeval over ``images`` ({"id": int, "width", "height"}) and ``category_ids``.

    ``gt``: COCO annotations ({"id", "image_id", "category_id", "bbox", "area", "iscrowd"} and,
    for segm, "segmentation" polygons); ``dt``: results ({"image_id", "category_id", "score"}
    and "bbox", or for segm "segmentation" as an RLE). The lists are not modified.
    """
    with_gt = {a["category_id"] for a in gt}
    if not with_gt:
        nothing: dict[int, float | None] = dict.fromkeys(category_ids)
        return AveragePrecision(ap50=nothing, ap75=dict(nothing))
    if not dt:  # loadRes cannot take an empty list; without detections AP is 0 where there is ground truth
        zeros = {c: (0.0 if c in with_gt else None) for c in category_ids}
        return AveragePrecision(ap50=dict(zeros), ap75=dict(zeros))
    with quiet():
        coco_gt = COCO()
        coco_gt.dataset = {"images": [dict(i) for i in images],
                           "categories": [{"id": c, "name": str(c)} for c in category_ids],
                           "annotations": [dict(a) for a in gt]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in dt])
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = [i["id"] for i in images]
        evaluator.params.catIds = list(category_ids)
        evaluator.params.maxDets = [1, 10, MAX_DETS]
        # Only area range 'all' is reported: evaluating the others (small, medium, large) would
        # quadruple the per-image work without changing 'all'.
        evaluator.params.areaRng = [[0.0, 1e5**2]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    a = params.areaRngLbl.index("all")
    m = list(params.maxDets).index(MAX_DETS)
    out: list[dict[int, float | None]] = []
    for threshold in IOU_THRESHOLDS:
        t = int(np.argmin(np.abs(np.asarray(params.iouThrs) - threshold)))
        per_class: dict[int, float | None] = {}
        for k, category in enumerate(params.catIds):
            p = precision[t, :, k, a, m]
            valid = p[p > -1]
            per_class[int(category)] = float(np.mean(valid)) if valid.size else None
        out.append(per_class)
    return AveragePrecision(ap50=out[0], ap75=out[1])
