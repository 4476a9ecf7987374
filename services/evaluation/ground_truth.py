"""The ground truth of an evaluation: a COCO dataset whose image ids are job ids.

Accepted form (anything else is refused with a precise reason, never guessed at):

- ``images``: ``[{"id": "<job id>", "width"?, "height"?, "view_label"?, ...}]``. ``id`` is the
  job's id, a string. ``width``/``height``, when given, must equal the job's original image
  size (the result's geometry is in those pixels). ``view_label`` is the image-level
  classification ground truth (one of the profile's view labels, compared case-insensitively
  for validity); ``label`` is refused, so that a misplaced view label is not silently ignored.
- ``categories``: ``[{"id", "name", ...}]``; each must be one of the profile's classes, with
  ``id`` its 1-based index in the profile's class list (as the results' ``category_id``).
- ``annotations``: ``[{"image_id", "category_id", "bbox"?, "segmentation"?, ...}]``: COCO
  geometry in original-image pixels, ``bbox`` = [x, y, w, h] with w, h > 0, ``segmentation`` a
  list of flat polygons [x1, y1, x2, y2, ...] (at least 3 points each; RLE is not accepted).
  Each needs a bbox or a polygon: the bbox is the object for box mAP, the polygons for masks.
  ``iscrowd`` must be 0 when given. ``keypoints``, when given, is COCO's flat [x, y, v, ...]
  (v 0, 1 or 2) and is checked but not used. ``id`` names the annotation in errors; ``area``
  and other COCO fields are accepted and not used. Geometry must lie inside the job's image and
  polygons must have an area: that needs the job, so ``geometry`` checks it.
- Other top-level COCO fields (``info``, ``licenses``) are accepted and not used.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from services.pipeline.profile import Profile

from .errors import EvaluationError

# Size limits: well above the model card's test set (4,478 images) and far below what would
# make one synchronous request unreasonable. The request body limit applies as well.
MAX_IMAGES = 10_000
MAX_ANNOTATIONS = 200_000
MAX_CATEGORIES = 1_000
MAX_POLYGONS_PER_ANNOTATION = 100
MAX_POLYGON_COORDS = 2_000  # 1,000 points (the model gives at most 64)
MAX_KEYPOINT_VALUES = 3_000  # 1,000 points
MAX_TOTAL_COORDS = 2_000_000  # over all polygons: rasterising costs about their perimeter
MAX_LABEL_CHARS = 128
MAX_JOB_ID_CHARS = 64
MAX_ERRORS_SHOWN = 5


def _even(polygon: list[float]) -> list[float]:
    if len(polygon) % 2:
        raise ValueError("a polygon is a flat list of x, y pairs: it needs an even number of coordinates")
    return polygon


def _triples(values: list[float]) -> list[float]:
    if len(values) % 3:
        raise ValueError("keypoints is a flat list [x1, y1, v1, x2, y2, v2, ...]: 3 numbers per point")
    bad = [k // 3 for k in range(2, len(values), 3) if values[k] not in (0, 1, 2)]
    if bad:
        raise ValueError(f"keypoint {bad[0]} has visibility {values[3 * bad[0] + 2]}; it must be 0, 1 or 2")
    return values


Coordinate = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Polygon = Annotated[list[Coordinate], Field(min_length=6, max_length=MAX_POLYGON_COORDS), AfterValidator(_even)]
JobId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_JOB_ID_CHARS)]
Label = Annotated[StrictStr, Field(min_length=1, max_length=MAX_LABEL_CHARS)]


class _Coco(BaseModel):
    # COCO files carry many optional fields (file_name, license, supercategory, area, ...).
    model_config = ConfigDict(extra="ignore", frozen=True)


class GTImage(_Coco):
    id: JobId = Field(description="the job's id")
    width: Annotated[StrictInt, Field(gt=0)] | None = Field(None, description="if given, the job's image width")
    height: Annotated[StrictInt, Field(gt=0)] | None = Field(None, description="if given, the job's image height")
    view_label: Label | None = Field(None, description="the image's classification ground truth (a view label)")

    @model_validator(mode="before")
    @classmethod
    def _no_misplaced_label(cls, data: Any) -> Any:
        if isinstance(data, dict) and "label" in data:
            raise ValueError("the image-level view label goes in 'view_label', not 'label'")
        return data


class GTCategory(_Coco):
    id: StrictInt = Field(description="1-based index of the class in the profile's class list")
    name: Label = Field(description="the profile's class name")


class GTAnnotation(_Coco):
    id: Any = Field(None, description="the annotation's id, named in errors (not used otherwise)")
    image_id: JobId
    category_id: StrictInt
    bbox: tuple[Coordinate, Coordinate, Coordinate, Coordinate] | None = Field(
        None, description="[x, y, width, height] in original-image pixels")
    segmentation: Annotated[list[Polygon], Field(max_length=MAX_POLYGONS_PER_ANNOTATION)] | None = Field(
        None, description="polygons, each flat [x1, y1, x2, y2, ...] with 3 points or more")
    keypoints: Annotated[list[Coordinate], Field(max_length=MAX_KEYPOINT_VALUES), AfterValidator(_triples)] | None = (
        Field(None, description="COCO keypoints [x1, y1, v1, ...] inside the image (checked, not used)"))
    iscrowd: StrictInt = Field(0, description="0 only")

    @field_validator("bbox", mode="before")
    @classmethod
    def _four_numbers(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and len(value) != 4:
            raise ValueError(f"bbox is [x, y, width, height]: 4 numbers, not {len(value)}")
        return value

    @field_validator("segmentation", mode="before")
    @classmethod
    def _polygons_only(cls, value: Any) -> Any:
        if isinstance(value, dict):
            raise ValueError("RLE segmentations are not accepted: send polygons [[x1, y1, x2, y2, ...], ...]")
        return value

    @field_validator("iscrowd")
    @classmethod
    def _not_crowd(cls, value: int) -> int:
        if value != 0:
            raise ValueError("crowd annotations (iscrowd=1) are not supported: send one annotation per object")
        return value

    @model_validator(mode="after")
    def _geometry(self) -> GTAnnotation:
        if self.bbox is not None and (self.bbox[2] <= 0 or self.bbox[3] <= 0):
            raise ValueError("bbox is [x, y, width, height] with width and height above 0")
        if self.bbox is None and not self.segmentation:
            raise ValueError("an annotation needs a bbox or a segmentation polygon")
        return self

    @property
    def polygons(self) -> list[list[float]]:
        return list(self.segmentation or [])

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The bbox, or the extent of the polygons when no bbox was given."""
        if self.bbox is not None:
            return self.bbox
        xs = [v for p in self.polygons for v in p[0::2]]
        ys = [v for p in self.polygons for v in p[1::2]]
        return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


class GroundTruth(_Coco):
    # At least one image (documented; an empty list is refused as empty_ground_truth, not malformed).
    images: Annotated[list[GTImage], Field(max_length=MAX_IMAGES, json_schema_extra={"minItems": 1})]
    categories: Annotated[list[GTCategory], Field(max_length=MAX_CATEGORIES)] = []
    annotations: Annotated[list[GTAnnotation], Field(max_length=MAX_ANNOTATIONS)] = []

    @model_validator(mode="after")
    def _bounded_polygons(self) -> GroundTruth:
        total = sum(len(p) for a in self.annotations for p in a.polygons)
        if total > MAX_TOTAL_COORDS:
            raise ValueError(f"the polygons hold {total} coordinates in all; at most {MAX_TOTAL_COORDS} are accepted")
        return self

    @property
    def job_ids(self) -> list[str]:
        return [image.id for image in self.images]

    @property
    def category_names(self) -> dict[int, str]:
        """Category id -> name, in the order the ground truth lists them."""
        return {c.id: c.name for c in self.categories}


def ground_truth_json_schema() -> dict[str, Any]:
    """The JSON schema of the accepted ground truth, self-contained (no ``$ref``), for the
    OpenAPI document. It cannot say everything (job ids that exist, the profile's classes)."""
    schema = GroundTruth.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"$ref"}:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


# --- parsing ---------------------------------------------------------------------------------


def _where(loc: Sequence[int | str]) -> str:
    out = "ground_truth"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _invalid(exc: ValidationError) -> EvaluationError:
    errors = [{"loc": _where(e["loc"]), "msg": e["msg"].removeprefix("Value error, ")}
              for e in exc.errors(include_url=False, include_input=False)]
    shown = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:MAX_ERRORS_SHOWN])
    more = f" (and {len(errors) - MAX_ERRORS_SHOWN} more)" if len(errors) > MAX_ERRORS_SHOWN else ""
    return EvaluationError("invalid_ground_truth", f"the ground truth is not valid COCO: {shown}{more}",
                           errors=errors[:100])


def _listing(values: Sequence[object], limit: int = 10) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _unstorable_text(node: Any, loc: tuple[int | str, ...] = ()) -> tuple[int | str, ...] | None:
    """Where a string (or key) holds a NUL or a lone surrogate, which no database column can
    store (PostgreSQL refuses both in text and JSONB); None when there is none."""
    if isinstance(node, str):
        return loc if _UNSTORABLE.search(node) else None
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and _UNSTORABLE.search(key):
                return loc  # the object holding the key (the key itself is not echoed back)
            found = _unstorable_text(value, (*loc, key))
            if found is not None:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = _unstorable_text(value, (*loc, i))
            if found is not None:
                return found
    return None


def parse_ground_truth(data: Any, profile: Profile) -> GroundTruth:
    """Validate a COCO ground truth against the profile; raises ``EvaluationError``."""
    if not isinstance(data, dict):
        raise EvaluationError("invalid_ground_truth", "the ground truth must be a COCO object with 'images', "
                              "'categories' and 'annotations'")
    where = _unstorable_text(data)
    if where is not None:
        raise EvaluationError("invalid_ground_truth", f"{_where(where)}: text may not contain NUL characters "
                              "(\\u0000) or unpaired surrogates")
    try:
        gt = GroundTruth.model_validate(data)
    except ValidationError as exc:
        raise _invalid(exc) from exc

    if not gt.images:
        raise EvaluationError("empty_ground_truth", "the ground truth has no images")
    if not gt.annotations and not any(image.view_label for image in gt.images):
        raise EvaluationError("empty_ground_truth", "the ground truth has neither annotations nor view labels "
                              "(images[].view_label): there is nothing to evaluate")

    duplicates = [job for job, n in Counter(gt.job_ids).items() if n > 1]
    if duplicates:
        raise EvaluationError("invalid_ground_truth", f"image ids appear more than once: {_listing(duplicates)}")
    duplicates_c = [cid for cid, n in Counter(c.id for c in gt.categories).items() if n > 1]
    if duplicates_c:
        raise EvaluationError("invalid_ground_truth", f"category ids appear more than once: {_listing(duplicates_c)}")

    for i, category in enumerate(gt.categories):
        if not 1 <= category.id <= len(profile.classes):
            raise EvaluationError(
                "unknown_category", f"ground_truth.categories[{i}]: category id {category.id} ({category.name!r}) is "
                f"not a class of profile {profile.name!r}: ids run from 1 to {len(profile.classes)}",
                category_id=category.id)
        expected = profile.classes[category.id - 1]
        if category.name != expected:
            hint = (f"; {category.name!r} has id {profile.category_id(category.name)}"
                    if category.name in profile.classes else f"; {category.name!r} is not a class of the profile")
            raise EvaluationError(
                "unknown_category", f"ground_truth.categories[{i}]: category id {category.id} is {expected!r} in "
                f"profile {profile.name!r}, not {category.name!r}{hint}", category_id=category.id)

    images = set(gt.job_ids)
    declared = gt.category_names
    for i, ann in enumerate(gt.annotations):
        if ann.image_id not in images:
            raise EvaluationError("invalid_ground_truth", f"ground_truth.annotations[{i}].image_id {ann.image_id!r} "
                                  "is not among the ground truth's images")
        if ann.category_id not in declared:
            raise EvaluationError("unknown_category", f"ground_truth.annotations[{i}].category_id {ann.category_id} "
                                  "is not among the ground truth's categories", category_id=ann.category_id)

    known_views = {label.casefold() for label in profile.view_labels}
    unknown_views = sorted({img.view_label for img in gt.images if img.view_label
                            and img.view_label.casefold() not in known_views})
    if unknown_views:
        raise EvaluationError("unknown_view_label", f"view labels that profile {profile.name!r} does not know "
                              f"(even ignoring case): {_listing(unknown_views)}", view_labels=unknown_views[:100])
    return gt
