"""The pipeline profile: prompts, label space, MAP tables and decoding, as versioned data.

The default profile ships inside the package (``profiles/fada-skd.json``); an operator can
point the service at another file, e.g. one holding the exact prompts an adapter was
trained on.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PROFILES_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "fada-skd"

Phase = Literal["interpret", "classify", "map", "detect", "keypoints", "segment"]


class ProfileError(ValueError):
    """The profile file is missing or inconsistent."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageSettings(_Strict):
    max_side: int = Field(1024, ge=32)


class Limits(_Strict):
    max_items: int = Field(50, ge=1)
    max_polygon_points: int = Field(64, ge=3)
    max_keypoints: int = Field(8, ge=1)
    max_field_chars: int = Field(400, ge=1)


class Decoding(_Strict):
    strategy: Literal["greedy", "sample"] = "greedy"
    temperature: float = Field(0.1, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)


class PhaseTokens(_Strict):
    interpret: int = Field(ge=1)
    classify: int = Field(ge=1)
    detect: int = Field(ge=1)
    keypoints: int = Field(ge=1)
    segment: int = Field(ge=1)


class Prompts(_Strict):
    interpret: str
    classify: str
    detect: str
    keypoints: str
    segment: str


class RoutingGroup(_Strict):
    detect: list[str]
    segment: list[str] | None


class Group(RoutingGroup):
    name: str
    compatible: list[str] = []


class FallbackRule(_Strict):
    keywords: list[str]
    detect: list[str]
    segment: list[str] | None


class MapTables(_Strict):
    """MAP rules as data (copied from the FADA taxonomy)."""

    classification_to_detect: dict[str, list[str]]
    classification_to_segment: dict[str, list[str]]
    specific_classification_labels: list[str]
    default_detect_classes: list[str]
    groups: list[Group]
    routing_groups: dict[str, RoutingGroup]
    plane_phrase_to_group: dict[str, str]
    group_aliases: dict[str, list[str]]
    interpretation_field_weights: dict[str, float]
    class_keywords: dict[str, list[str]]
    negative_measurement_phrases: list[str]
    keyword_fallback: list[FallbackRule]


class Profile(_Strict):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    version: str
    image: ImageSettings = ImageSettings()
    coordinate_scale: int = Field(1000, ge=1)
    view_labels: list[str]
    classes: list[str]
    keypoint_classes: list[str]
    interpretation_fields: list[str]
    limits: Limits = Limits()
    decoding: Decoding = Decoding()
    max_new_tokens: PhaseTokens
    prompts: Prompts
    map: MapTables

    @model_validator(mode="after")
    def _labels_are_known(self) -> Profile:
        known = set(self.classes)
        groups = {g.name for g in self.map.groups} | set(self.map.routing_groups)
        unknown: set[str] = set(self.keypoint_classes) - known
        for table in (self.map.classification_to_detect, self.map.classification_to_segment):
            for classes in table.values():
                unknown |= set(classes) - known
        rules: list[RoutingGroup | FallbackRule] = [*self.map.groups, *self.map.routing_groups.values(),
                                                    *self.map.keyword_fallback]
        for group in rules:
            unknown |= set(group.detect) - known
            unknown |= set(group.segment or []) - known
        if unknown:
            raise ValueError(f"MAP tables name classes missing from 'classes': {sorted(unknown)}")
        missing_groups = set(self.map.plane_phrase_to_group.values()) - groups
        if missing_groups:
            raise ValueError(f"plane phrases name unknown groups: {sorted(missing_groups)}")
        return self

    def category_id(self, label: str) -> int:
        """COCO category id: the 1-based index of the label in the class list."""
        return self._category_ids[label]

    @cached_property
    def _category_ids(self) -> dict[str, int]:
        return {label: i + 1 for i, label in enumerate(self.classes)}

    def routing_group(self, name: str) -> RoutingGroup:
        """A reviewer-selectable group (HITL) by name; ``KeyError`` when unknown."""
        return self.map.routing_groups[name]


def load_profile(name_or_path: str | Path = DEFAULT_PROFILE) -> Profile:
    """Load a profile by bundled name (``fada-skd``) or from a JSON file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.json"
    if not path.is_file():
        bundled = sorted(p.stem for p in PROFILES_DIR.glob("*.json"))
        raise ProfileError(f"profile not found: {name_or_path} (looked for {path}; bundled: {bundled})")
    try:
        return Profile.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ProfileError(f"invalid profile {path}: {exc}") from exc
