"""A job's result as a COCO document (``images``, ``categories``, ``annotations``), the form
pycocotools and most annotation tools read. Image ids are job ids."""

from __future__ import annotations

from typing import Any

from services.pipeline.profile import Profile
from shared.schemas.results import ResultDocument


def to_coco(document: ResultDocument, profile: Profile, *, image_id: str) -> dict[str, Any]:
    """Detections, segmentations and keypoints as COCO annotations, numbered 1..n."""
    annotations: list[dict[str, Any]] = []

    def add(kind: str, item: dict[str, Any]) -> None:
        item.update(id=len(annotations) + 1, image_id=image_id, iscrowd=0, fada_kind=kind)
        annotations.append(item)

    for d in document.detections:
        _, _, w, h = d.bbox
        add("detection", {"category_id": d.category_id, "bbox": list(d.bbox), "area": round(w * h, 2),
                          "score": d.score if d.score is not None else 1.0})
    for s in document.segmentations:
        add("segmentation", {"category_id": s.category_id, "bbox": list(s.bbox), "segmentation": s.segmentation,
                             "area": s.area, "score": s.score if s.score is not None else 1.0})
    for k in document.keypoints:
        _, _, w, h = k.bbox
        add("keypoints", {"category_id": k.category_id, "bbox": list(k.bbox), "area": round(w * h, 2),
                          "keypoints": k.keypoints, "num_keypoints": k.num_keypoints, "score": 1.0})
    return {
        "info": {"description": "FADA Serve result", "model": document.model.model_dump(mode="json")},
        "images": [{"id": image_id, "width": document.image.width, "height": document.image.height,
                    "file_name": f"{image_id}.{document.image.format}",
                    # not COCO keys: which frame of a multi-frame upload the annotations are on
                    "frame_index": document.image.frame, "frame_count": document.image.frame_count}],
        "categories": [{"id": i + 1, "name": label, "supercategory": "fetal_ultrasound"}
                       for i, label in enumerate(profile.classes)],
        "annotations": annotations,
    }
