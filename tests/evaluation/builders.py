"""Builders for the evaluation tests: result documents and COCO ground truths."""

from __future__ import annotations

from typing import Any

from services.pipeline.profile import load_profile
from shared.schemas.results import Classification, Detection, ImageInfo, ModelInfo, ResultDocument, Segmentation

PROFILE = load_profile("fada-skd")


def cid(label: str) -> int:
    """COCO category id of a profile class (1-based index)."""
    return PROFILE.category_id(label)


def category(label: str) -> dict[str, Any]:
    return {"id": cid(label), "name": label, "supercategory": "fetal_ultrasound"}


def rect(x: float, y: float, w: float, h: float) -> list[float]:
    """A rectangle as a flat COCO polygon."""
    return [x, y, x + w, y, x + w, y + h, x, y + h]


Box = tuple[str, tuple[float, float, float, float], float | None]  # (label, bbox, score)
Mask = tuple[str, list[list[float]], float | None]  # (label, polygons, score)


def document(*, width: int = 200, height: int = 200, boxes: list[Box] | None = None, masks: list[Mask] | None = None,
             label: str | None = None, revision: str = "rev-1") -> ResultDocument:
    return ResultDocument(
        status="succeeded",
        model=ModelInfo(base="tiny/base", adapter=None, revision=revision, profile="fada-skd", untrained=True),
        image=ImageInfo(width=width, height=height, sha256="0" * 64, format="png"),
        classification=Classification(label=label) if label is not None else None,
        detections=[Detection(id=n + 1, label=lab, category_id=cid(lab), bbox=bbox, score=score)
                    for n, (lab, bbox, score) in enumerate(boxes or [])],
        segmentations=[Segmentation(id=n + 1, label=lab, category_id=cid(lab), bbox=(0, 0, 1, 1), segmentation=polys,
                                    area=1.0, score=score)
                       for n, (lab, polys, score) in enumerate(masks or [])],
    )


def box_ann(image_id: str, label: str, bbox: list[float]) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": cid(label), "bbox": bbox, "iscrowd": 0}


def mask_ann(image_id: str, label: str, polygons: list[list[float]]) -> dict[str, Any]:
    return {"image_id": image_id, "category_id": cid(label), "segmentation": polygons, "iscrowd": 0}


def coco(images: list[str | dict[str, Any]], annotations: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """A ground truth: ``images`` are job ids (or image dicts), annotations numbered 1..n."""
    return {
        "info": {"description": "test ground truth"},
        "images": [{"id": i} if isinstance(i, str) else i for i in images],
        "categories": [category(lab) for lab in labels],
        "annotations": [{"id": n + 1, **a} for n, a in enumerate(annotations)],
    }
