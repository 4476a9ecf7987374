"""The result document of one analysed image, as the HTTP contract ("Results") defines it.

Geometry is COCO: pixels of the ORIGINAL image, origin top-left, bbox = [x, y, w, h],
polygons flat [x1, y1, x2, y2, ...].
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PhaseName = Literal["interpret", "classify", "map", "detect", "segment", "keypoints"]
PhaseStatus = Literal["ok", "skipped", "invalid_output", "error"]
Tier = Literal["P1", "P2", "P3", "P4", "P5", "HITL"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelInfo(_Doc):
    base: str
    adapter: str | None
    revision: str
    profile: str
    untrained: bool


class ImageInfo(_Doc):
    width: int
    height: int
    sha256: str
    format: Literal["png", "jpeg", "dicom"]
    pixel_spacing_mm: tuple[float, float] | None = None
    # Which frame of the upload was analysed (a DICOM cine or an APNG has many): a result says
    # what it annotates. Documents written before these fields existed read as frame 0, count unknown.
    frame: int = Field(default=0, ge=0, description="0-based index of the analysed frame in the upload")
    frame_count: int | None = Field(default=None, ge=1, description="frames in the upload; null if not recorded")


class Classification(_Doc):
    label: str


class Mapping(_Doc):
    detect_classes: list[str]
    segment_classes: list[str] | None
    tier: Tier
    group: str | None = None


class Detection(_Doc):
    id: int
    label: str
    category_id: int
    bbox: tuple[float, float, float, float]
    score: float | None = None


class Segmentation(_Doc):
    id: int
    label: str
    category_id: int
    bbox: tuple[float, float, float, float]
    segmentation: list[list[float]]
    area: float
    score: float | None = None


class Keypoints(_Doc):
    id: int
    label: str
    category_id: int
    bbox: tuple[float, float, float, float]
    keypoints: list[float]
    num_keypoints: int


class PhaseReport(_Doc):
    status: PhaseStatus
    latency_ms: float | None = None
    detail: str | None = None
    raw: str | None = Field(default=None, description="the model's raw text, kept for audit")
    dropped: list[str] = Field(default_factory=list, description="items dropped during normalisation, why")


class ResultDocument(_Doc):
    job_id: str | None = None
    status: str
    model: ModelInfo
    image: ImageInfo
    interpretation: dict[str, str] | None = None
    classification: Classification | None = None
    mapping: Mapping | None = None
    detections: list[Detection] = Field(default_factory=list)
    segmentations: list[Segmentation] = Field(default_factory=list)
    keypoints: list[Keypoints] = Field(default_factory=list)
    phases: dict[PhaseName, PhaseReport] = Field(default_factory=dict)
