"""The MAP phase: which structure classes to detect (and segment) for one image.

MAP makes no model call. It is a pure function of the classification label, the
interpretation and the profile's MAP tables, applied as FADA's 5-tier cascade:

- P1  a specific classification label maps directly;
- P2  a plane phrase in ``imaging_plane`` / ``fetal_orientation`` picks a group;
- P3  weighted keyword scores over the interpretation pick the best group
      (then, if nothing scores, the ordered keyword-fallback rules);
- P4  a generic label's own mapping;
- P5  the default classes.

The tier that decided and a human-readable reason travel with the decision, so a reviewer
can see why a structure was (not) looked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.pipeline.profile import Group, MapTables, RoutingGroup
from shared.schemas import results
from shared.schemas.results import Tier

# Fields searched for plane phrases (P2), in the order they are tried: the plane field is
# the model's most direct statement of the view, the orientation field a weaker one.
PLANE_FIELDS: tuple[str, ...] = ("imaging_plane", "fetal_orientation")

# The P3 body-pose vs organ override works on these two groups of the FADA taxonomy.
BODY_GROUP = "body_full"
ORGAN_GROUP = "doppler"

# The measurement field whose weight drops when the model says nothing could be measured.
MEASUREMENT_FIELD = "biometric_measurements"
DAMPENED_WEIGHT = 0.3


class UnknownGroup(ValueError):
    """A reviewer named a structure group that the profile does not define."""


@dataclass(frozen=True)
class MapDecision:
    """What MAP decided. The lists are fresh copies: callers may keep or change them."""

    detect_classes: list[str]
    segment_classes: list[str] | None
    tier: Tier
    group: str | None
    reason: str

    def to_model(self) -> results.Mapping:
        """The ``mapping`` block of the result document."""
        return results.Mapping(
            detect_classes=list(self.detect_classes),
            segment_classes=None if self.segment_classes is None else list(self.segment_classes),
            tier=self.tier,
            group=self.group,
        )


def needs_keypoints(classes: Iterable[str], keypoint_classes: Iterable[str]) -> bool:
    """True when any class to detect is a keypoint class (the keypoints call replaces DETECT)."""
    wanted = set(keypoint_classes)
    return any(c in wanted for c in classes)


def runnable_phases(decision: MapDecision, keypoint_classes: Iterable[str]) -> list[str]:
    """The localisation phases a decision can run: its box phase (``keypoints`` when a class to
    detect is a keypoint class, else ``detect``), and ``segment`` when it has segment classes."""
    boxes = "keypoints" if needs_keypoints(decision.detect_classes, keypoint_classes) else "detect"
    return [boxes, *(["segment"] if decision.segment_classes else [])]


def map_reviewed(label: str | None, interpretation: Mapping[str, str] | None, tables: MapTables, *,
                 corrected_label: str | None = None,
                 corrected_interpretation: Mapping[str, str] | None = None) -> MapDecision:
    """MAP over the model's first stage as a HITL reviewer corrected it: the corrected label
    replaces the model's, corrected interpretation fields replace the model's fields of the same
    name. Without corrections this is ``map_structures``."""
    if corrected_label is None and not corrected_interpretation:
        return map_structures(label, interpretation, tables)
    merged = {**(interpretation or {}), **(corrected_interpretation or {})}
    decision = map_structures(corrected_label or label, merged or None, tables)
    return MapDecision(decision.detect_classes, decision.segment_classes, decision.tier, decision.group,
                       f"{decision.reason} (after the reviewer's corrections)")


def map_structures(
    label: str | None,
    interpretation: Mapping[str, str] | None,
    tables: MapTables,
) -> MapDecision:
    """Run the P1..P5 cascade; the first tier that yields classes decides."""
    if label is not None and label in tables.specific_classification_labels:
        decision = _from_label(label, tables, "P1", "specific classification label {!r} maps directly")
        if decision is not None:
            return decision
    if interpretation:
        decision = _by_plane_phrase(interpretation, tables) or _by_keyword_scores(interpretation, tables)
        if decision is not None:
            return decision
    if label is not None:
        decision = _from_label(label, tables, "P4", "generic classification label {!r} has its own mapping")
        if decision is not None:
            return decision
    return MapDecision(
        detect_classes=list(tables.default_detect_classes),
        segment_classes=None,
        tier="P5",
        group=None,
        reason="no rule matched the label or the interpretation: default classes",
    )


def map_group(group: str, tables: MapTables) -> MapDecision:
    """The classes of a group a reviewer chose (HITL mode).

    Routing-group names are the reviewer's vocabulary; the scoring groups' names (e.g.
    ``body_full``) are accepted too, so a reviewer may confirm what autonomous MAP chose.
    """
    found = tables.routing_groups.get(group) or _find_group(group, tables)
    if found is None:
        known = ", ".join(tables.routing_groups)
        raise UnknownGroup(f"unknown structure group {group!r}; choose one of: {known}")
    return _from_group(group, found, "HITL", f"group {group!r} chosen by the reviewer")


def _from_label(label: str, tables: MapTables, tier: Tier, reason: str) -> MapDecision | None:
    detect = tables.classification_to_detect.get(label)
    if not detect:
        return None
    segment = tables.classification_to_segment.get(label)
    return MapDecision(
        detect_classes=list(detect),
        segment_classes=None if segment is None else list(segment),
        tier=tier,
        group=None,
        reason=reason.format(label),
    )


def _find_group(name: str, tables: MapTables) -> RoutingGroup | None:
    # P2/P3 name scoring groups; HITL names routing groups. Both tables are searched so
    # that either vocabulary resolves, scoring groups first for the autonomous tiers.
    for group in tables.groups:
        if group.name == name:
            return group
    return tables.routing_groups.get(name)


def _from_group(name: str, group: RoutingGroup, tier: Tier, reason: str) -> MapDecision:
    return MapDecision(
        detect_classes=list(group.detect),
        segment_classes=None if group.segment is None else list(group.segment),
        tier=tier,
        group=name,
        reason=reason,
    )


def _by_plane_phrase(interpretation: Mapping[str, str], tables: MapTables) -> MapDecision | None:
    for field in PLANE_FIELDS:
        text = _text(interpretation, field)
        if not text:
            continue
        # Phrases are tried in table order, so the table's author decides precedence.
        for phrase, name in tables.plane_phrase_to_group.items():
            if phrase.lower() in text:
                group = _find_group(name, tables)
                if group is not None:
                    reason = f"plane phrase {phrase!r} in {field} picks group {name!r}"
                    return _from_group(name, group, "P2", reason)
    return None


def _by_keyword_scores(interpretation: Mapping[str, str], tables: MapTables) -> MapDecision | None:
    scores = score_groups(interpretation, tables)
    best: Group | None = None
    best_score = 0.0
    for group in tables.groups:  # strict '>' keeps the first group on ties
        if scores[group.name] > best_score:
            best, best_score = group, scores[group.name]
    if best is not None:
        ranked = ", ".join(f"{n}={s:.2f}" for n, s in sorted(scores.items(), key=lambda kv: -kv[1]) if s > 0)
        organ = _find_group(ORGAN_GROUP, tables)
        if best.name == BODY_GROUP and organ is not None and _organ_words_present(interpretation, tables):
            reason = f"keyword scores ({ranked}): {BODY_GROUP} won but organ words are present"
            return _from_group(ORGAN_GROUP, organ, "P3", reason)
        return _from_group(best.name, best, "P3", f"keyword scores ({ranked})")
    return _by_keyword_fallback(interpretation, tables)


def score_groups(interpretation: Mapping[str, str], tables: MapTables) -> dict[str, float]:
    """P3's weighted keyword score of every scoring group (exposed for audits and tests)."""
    scores = {group.name: 0.0 for group in tables.groups}
    for field, weight in _field_weights(interpretation, tables):
        text = _padded(interpretation, field)
        for group in tables.groups:
            scores[group.name] += weight * _group_hits(group, text, tables)
    return scores


def _field_weights(interpretation: Mapping[str, str], tables: MapTables) -> list[tuple[str, float]]:
    weighted = []
    for field in interpretation:
        weight = tables.interpretation_field_weights.get(field, 0.0)
        if field == MEASUREMENT_FIELD and _contains_any(
            _text(interpretation, field), tables.negative_measurement_phrases
        ):
            # "HC not measurable" still names the head, but is weak evidence for the plane.
            weight = min(weight, DAMPENED_WEIGHT)
        if weight > 0:
            weighted.append((field, weight))
    return weighted


def _group_hits(group: Group, text: str, tables: MapTables) -> int:
    # Each keyword or alias counts once however often it occurs: a long sentence that
    # repeats "head" is no stronger evidence than one that says it once.
    hits = 0
    for cls in dict.fromkeys(group.detect):
        hits += sum(1 for kw in tables.class_keywords.get(cls, []) if kw and kw.lower() in text)
    hits += sum(1 for alias in tables.group_aliases.get(group.name, []) if alias and alias.lower() in text)
    return hits


def _organ_words_present(interpretation: Mapping[str, str], tables: MapTables) -> bool:
    organ = _find_group(ORGAN_GROUP, tables)
    if organ is None:
        return False
    words = [kw for cls in organ.detect for kw in tables.class_keywords.get(cls, [])]
    # Only the fields that took part in scoring count: a word in a zero-weight field
    # (image_quality) did not help any group win, so it should not overturn the winner.
    fields = [field for field, _ in _field_weights(interpretation, tables)]
    return any(_contains_any(_padded(interpretation, field), words) for field in fields)


def _by_keyword_fallback(interpretation: Mapping[str, str], tables: MapTables) -> MapDecision | None:
    joined = " " + " ".join(_text(interpretation, f) for f in interpretation) + " "
    for rule in tables.keyword_fallback:
        for keyword in rule.keywords:
            if keyword and keyword.lower() in joined:
                return MapDecision(
                    detect_classes=list(rule.detect),
                    segment_classes=None if rule.segment is None else list(rule.segment),
                    tier="P3",
                    group=None,
                    reason=f"keyword fallback: {keyword!r} found, no group scored",
                )
    return None


def _text(interpretation: Mapping[str, str], field: str) -> str:
    value = interpretation.get(field)
    return value.lower() if isinstance(value, str) else ""


def _padded(interpretation: Mapping[str, str], field: str) -> str:
    # Spaces at both ends let space-delimited aliases (" hc ", " ac ") match at the edges.
    return " " + _text(interpretation, field) + " "


def _contains_any(text: str, phrases: Sequence[str]) -> bool:
    return any(p and p.lower() in text for p in phrases)


__all__ = [
    "MapDecision",
    "UnknownGroup",
    "map_group",
    "map_structures",
    "needs_keypoints",
    "score_groups",
]
