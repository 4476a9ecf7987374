"""Turn the model's raw text for one phase into validated items, or say why it is invalid.

``parse_phase`` never raises: a model's output is untrusted input, and a bad answer must
become an ``invalid_output`` phase report, not a failed job. It is lenient the way FADA's
reference app is (think block, code fences, ``box_2d``, trailing commas, partial lists) and
strict about what reaches the result document (labels, coordinate ranges, field types).

Coordinates stay in the model's 0..scale space here; ``normalize`` maps them to pixels.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# The 8 string fields FADA's interpret phase was trained to give (the profile's
# ``interpretation_fields``); used when the caller passes no field list.
INTERPRETATION_FIELDS: tuple[str, ...] = (
    "anatomical_structures",
    "fetal_orientation",
    "imaging_plane",
    "biometric_measurements",
    "gestational_age",
    "image_quality",
    "normality_assessment",
    "clinical_recommendations",
)

LIST_PHASES: frozenset[str] = frozenset({"detect", "segment", "keypoints"})
OBJECT_PHASES: frozenset[str] = frozenset({"interpret", "classify"})

# Coordinates a little outside the range are rounding noise (some Qwen docs say 0-999,
# some outputs say 1001); further out, the item is nonsense and is rejected.
CLAMP_TOLERANCE = 0.01

BOX_KEYS: tuple[str, ...] = ("bbox_2d", "box_2d")

_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*[ \t]*\r?\n?(.*?)(?:```|\Z)", re.DOTALL)
_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
_DECODER = json.JSONDecoder()

Item = dict[str, Any]
ParseValue = dict[str, str] | str | list[Item] | None


@dataclass(frozen=True)
class ParseResult:
    """The outcome of parsing one phase's raw text.

    ``value``: interpret -> dict of the field strings; classify -> the canonical view label;
    detect/segment/keypoints -> list of item dicts ``{"label", "bbox_2d"?, "mask"?,
    "keypoints"?}`` in model coordinates. ``detail`` says why the output is invalid, or what
    was repaired; ``rejected`` names each dropped item and why.
    """

    ok: bool
    value: ParseValue = None
    detail: str | None = None
    rejected: list[str] = field(default_factory=list)

    @property
    def items(self) -> list[Item]:
        """The items of a list phase (empty for other phases or an invalid output)."""
        return self.value if isinstance(self.value, list) else []


class _Invalid(Exception):
    """Internal: the whole output is unusable; the message becomes ``detail``."""


class _Reject(Exception):
    """Internal: one item is unusable; the message becomes its rejection reason."""


def parse_phase(
    phase: str,
    raw: str,
    *,
    allowed_labels: Sequence[str],
    scale: int = 1000,
    fields: Sequence[str] = (),
    view_labels: Sequence[str] = (),
    max_items: int | None = None,
) -> ParseResult:
    """Parse ``raw`` for ``phase`` (interpret, classify, detect, segment, keypoints).

    ``allowed_labels``: the structure classes asked for (list phases), also the view labels
    for classify when ``view_labels`` is empty. ``fields``: interpret's required fields
    (default: the 8 FADA fields). ``max_items``: items beyond it are rejected (a model stuck
    in a repetition loop should not flood the result).
    """
    notes: list[str] = []
    try:
        if not isinstance(raw, str):
            raise _Invalid(f"expected text, got {type(raw).__name__}")
        text = _clean(raw, notes)
        if not text:
            raise _Invalid("empty output")
        if phase == "interpret":
            return _done(_interpret(text, fields or INTERPRETATION_FIELDS, notes), notes)
        if phase == "classify":
            return _done(_classify(text, view_labels or allowed_labels, notes), notes)
        if phase in LIST_PHASES:
            return _items(phase, text, allowed_labels, scale, max_items, notes)
        raise _Invalid(f"unknown phase {phase!r}")
    except _Invalid as exc:
        return ParseResult(ok=False, detail=_join([str(exc), *notes]))
    except Exception as exc:  # the contract is "never raises"; e.g. RecursionError on deep nesting
        return ParseResult(ok=False, detail=f"unparseable output ({type(exc).__name__})")


def _done(value: ParseValue, notes: list[str]) -> ParseResult:
    return ParseResult(ok=True, value=value, detail=_join(notes))


def _join(notes: Sequence[str]) -> str | None:
    return "; ".join(dict.fromkeys(notes)) if notes else None


# --- text clean-up -----------------------------------------------------------------------


def _clean(raw: str, notes: list[str]) -> str:
    text = raw.strip()
    for token in _END_TOKENS:
        if token in text:
            text = text.split(token, 1)[0].strip()
    think = _THINK.match(text)
    if think:
        if think.group(1).strip():
            notes.append("stripped a non-empty think block")
        text = text[think.end() :]
    elif text.startswith("<think>"):
        raise _Invalid("unterminated think block (output truncated?)")
    fence = _FENCE.search(text)
    if fence:
        notes.append("stripped a code fence")
        text = fence.group(1)
    return text.strip()


def repair_trailing_commas(text: str) -> tuple[str, bool]:
    """Drop commas that directly precede ``]`` or ``}``, leaving string contents alone."""
    out: list[str] = []
    in_string = escaped = changed = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j < n and text[j] in "]}":
                changed = True
                i += 1
                continue
        out.append(ch)
        i += 1
    return "".join(out), changed


def _load(text: str, opener: str, notes: list[str]) -> Any:
    """Decode the JSON document in ``text``; tolerate prose around it and trailing commas."""
    text, repaired = repair_trailing_commas(text)
    if repaired:
        notes.append("repaired trailing commas")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        first_error = exc
    start = text.find(opener)
    if start < 0:
        raise _Invalid(_json_error(first_error))
    try:
        value, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise _Invalid(_json_error(exc)) from None
    notes.append("ignored text around the JSON")
    return value


# --- interpret and classify --------------------------------------------------------------


def _interpret(text: str, fields: Sequence[str], notes: list[str]) -> dict[str, str]:
    doc = _load(text, "{", notes)
    if not isinstance(doc, dict):
        raise _Invalid(f"expected a JSON object, got {_kind(doc)}")
    missing = [f for f in fields if f not in doc]
    if missing:
        raise _Invalid(f"missing fields: {', '.join(missing)}")
    out: dict[str, str] = {}
    wrong: list[str] = []
    for name in fields:  # extra keys are ignored: only the contract's fields go on
        value = doc[name]
        if isinstance(value, str):
            out[name] = value.strip()
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = str(value)
            notes.append(f"{name}: number turned into text")
        elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            out[name] = "; ".join(v.strip() for v in value)
            notes.append(f"{name}: list joined into text")
        else:
            wrong.append(f"{name} ({_kind(value)})")
    if wrong:
        raise _Invalid(f"fields are not text: {', '.join(wrong)}")
    return out


def _classify(text: str, labels: Sequence[str], notes: list[str]) -> str:
    bare = text.strip().strip("\"'").strip()
    if "{" not in text:
        # The model sometimes answers with the bare label; accept it only if it is one.
        label = _canonical(bare, labels)
        if label is None:
            raise _Invalid(f"not a JSON object and not a known view label: {bare[:60]!r}")
        notes.append("bare label without JSON")
        return label
    doc = _load(text, "{", notes)
    if not isinstance(doc, dict):
        raise _Invalid(f"expected a JSON object, got {_kind(doc)}")
    value = doc.get("label")
    if not isinstance(value, str):
        raise _Invalid("missing or non-text 'label'")
    label = _canonical(value.strip(), labels)
    if label is None:
        raise _Invalid(f"unknown view label {value[:60]!r}")
    if label != value:
        notes.append(f"label {value!r} read as {label!r}")
    return label


def _canonical(label: str, labels: Sequence[str]) -> str | None:
    """The profile's spelling of ``label``: exact match, else a unique case-insensitive one."""
    if label in labels:
        return label
    folded = [known for known in labels if known.casefold() == label.casefold()]
    return folded[0] if len(folded) == 1 else None


# --- detect, segment, keypoints ----------------------------------------------------------


def _items(
    phase: str,
    text: str,
    allowed: Sequence[str],
    scale: int,
    max_items: int | None,
    notes: list[str],
) -> ParseResult:
    raw_items = _load_list(text, notes)
    items: list[Item] = []
    rejected: list[str] = []
    seen: dict[str, int] = {}
    for index, raw_item in enumerate(raw_items, start=1):
        try:
            item = _item(phase, raw_item, allowed, scale, notes)
        except _Reject as exc:
            rejected.append(f"item {index}: {exc}")
            continue
        key = json.dumps(item, sort_keys=True)
        if key in seen:  # greedy decoding can loop; an exact repeat adds nothing
            rejected.append(f"item {index}: duplicate of item {seen[key]}")
            continue
        if max_items is not None and len(items) >= max_items:
            rejected.append(f"item {index}: over the limit of {max_items} items")
            continue
        seen[key] = index
        items.append(item)
    if rejected:
        notes.append(f"{len(rejected)} of {len(raw_items)} items rejected")
    if raw_items and not items:
        return ParseResult(ok=False, value=[], detail=_join(notes), rejected=rejected)
    return ParseResult(ok=True, value=items, detail=_join(notes), rejected=rejected)


def _load_list(text: str, notes: list[str]) -> list[Any]:
    repaired, changed = repair_trailing_commas(text)
    if changed:
        notes.append("repaired trailing commas")
    try:
        doc = json.loads(repaired)
    except json.JSONDecodeError as exc:
        return _salvage_list(repaired, exc, notes)
    if isinstance(doc, dict):
        notes.append("single object read as a one-item list")
        return [doc]
    if not isinstance(doc, list):
        raise _Invalid(f"expected a JSON list, got {_kind(doc)}")
    return doc


def _salvage_list(text: str, first_error: json.JSONDecodeError, notes: list[str]) -> list[Any]:
    """Keep the complete items of a list that is cut short or has junk after an item."""
    start = text.find("[")
    brace = text.find("{")
    if start < 0 or 0 <= brace < start:
        # No list, or an object comes first: a "[" further on belongs to one of its values.
        raise _Invalid(_json_error(first_error))
    if text[:start].strip():
        notes.append("ignored text before the JSON")
    items: list[Any] = []
    pos, n = start + 1, len(text)
    while True:
        while pos < n and (text[pos].isspace() or text[pos] == ","):
            pos += 1
        if pos >= n:
            problem = f"list not closed after {len(items)} items (output truncated?)"
            break
        if text[pos] == "]":
            if text[pos + 1 :].strip():
                notes.append("ignored text after the JSON")
            return items
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            problem = _json_error(exc)
            break
        items.append(value)
    if not items:
        raise _Invalid(problem)
    notes.append(f"kept the {len(items)} complete item(s) before: {problem}")
    return items


def _item(phase: str, raw: Any, allowed: Sequence[str], scale: int, notes: list[str]) -> Item:
    if not isinstance(raw, dict):
        raise _Reject(f"not an object ({_kind(raw)})")
    value = raw.get("label")
    if not isinstance(value, str) or not value.strip():
        raise _Reject("missing or non-text label")
    label = _canonical(value.strip(), allowed)
    if label is None:
        raise _Reject(f"label {value[:40]!r} was not asked for")
    item: Item = {"label": label}
    box_key = next((k for k in BOX_KEYS if k in raw), None)
    if box_key is not None:
        item["bbox_2d"] = _box(raw[box_key], scale, notes)
    elif phase != "segment":  # a segment item can take its box from the polygon
        raise _Reject("missing bbox_2d")
    if phase == "segment":
        if "mask" not in raw:
            raise _Reject("missing mask")
        item["mask"] = _polygon(raw["mask"], scale, notes)
    elif phase == "keypoints":
        if "keypoints" not in raw:
            raise _Reject("missing keypoints")
        item["keypoints"] = _keypoints(raw["keypoints"], scale, notes)
    return item


def _box(value: Any, scale: int, notes: list[str]) -> list[float]:
    if not isinstance(value, list) or len(value) != 4:
        raise _Reject("bbox_2d is not a list of 4 numbers")
    return [_coord(v, scale, "bbox_2d", notes) for v in value]


def _polygon(value: Any, scale: int, notes: list[str]) -> list[list[float]]:
    if not isinstance(value, list) or not value:
        raise _Reject("mask is not a list of points")
    if all(_is_number(v) for v in value):
        # A flat [x1, y1, x2, y2, ...] list is COCO's layout; read it as pairs.
        if len(value) % 2:
            raise _Reject("flat mask has an odd number of values")
        notes.append("flat mask read as [x, y] pairs")
        value = [value[i : i + 2] for i in range(0, len(value), 2)]
    points = []
    for point in value:
        if not isinstance(point, list) or len(point) != 2:
            raise _Reject("mask point is not [x, y]")
        points.append([_coord(point[0], scale, "mask", notes), _coord(point[1], scale, "mask", notes)])
    return points


def _keypoints(value: Any, scale: int, notes: list[str]) -> list[list[float]]:
    if not isinstance(value, list) or not value:
        raise _Reject("keypoints is not a list of points")
    points = []
    for point in value:
        if not isinstance(point, list) or len(point) not in (2, 3):
            raise _Reject("keypoint is not [x, y, v]")
        if not all(_is_number(v) for v in point):
            raise _Reject("keypoint values must be numbers")
        # [x, y] without a flag is a point the model placed, i.e. visible.
        visibility = float(point[2]) if len(point) == 3 else 2.0
        if visibility == 0:
            # COCO: a missing point's coordinates mean nothing; do not reject the item for them.
            points.append([0.0, 0.0, 0.0])
            continue
        x = _coord(point[0], scale, "keypoint", notes)
        y = _coord(point[1], scale, "keypoint", notes)
        points.append([x, y, visibility])
    return points


def _coord(value: Any, scale: int, what: str, notes: list[str]) -> float:
    if not _is_number(value):
        raise _Reject(f"{what} coordinate {str(value)[:20]!r} is not a number")
    number = float(value)
    if 0 <= number <= scale:
        return number
    slack = CLAMP_TOLERANCE * scale
    if -slack <= number <= scale + slack:
        notes.append(f"clamped coordinates slightly outside 0..{scale}")
        return min(max(number, 0.0), float(scale))
    raise _Reject(f"{what} coordinate {number:g} is outside 0..{scale}")


def _json_error(exc: json.JSONDecodeError) -> str:
    # An error at the very end means the text stops mid-document: usually the token limit.
    if exc.pos >= len(exc.doc.rstrip()):
        return f"not valid JSON at char {exc.pos}: output ends mid-document (truncated?)"
    return f"not valid JSON at char {exc.pos}: {exc.msg}"


def _is_number(value: Any) -> bool:
    # bool is an int subclass; NaN/Infinity literals are accepted by Python's json module.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "text", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


__all__ = [
    "INTERPRETATION_FIELDS",
    "ParseResult",
    "ParseValue",
    "parse_phase",
    "repair_trailing_commas",
]
