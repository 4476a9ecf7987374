"""JSON schemas for each phase's answer, sized so the answer always fits its token budget.

Every JSON phase decodes under one of these schemas (compiled by xgrammar), so the model can
only emit: the requested labels, integer coordinates in [0, scale], bounded lists, compact
JSON with no free whitespace. A schema whose longest possible answer would not fit in the
phase's ``max_new_tokens`` is shrunk (fewer items, then fewer points or characters) so a
well-formed answer can always be finished: one token is at least one character, so the
longest answer in characters bounds the longest answer in tokens.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.pipeline.profile import Limits

# Printable ASCII without the quote and backslash: no escapes and no multi-byte characters,
# so every character costs at most one token.
_TEXT_CHARS = r"[\x20\x21\x23-\x5b\x5d-\x7e]"


class BudgetTooSmall(ValueError):
    """A phase's max_new_tokens cannot hold even the smallest useful answer."""


@dataclass(frozen=True)
class PhaseGrammar:
    phase: str
    schema: dict[str, Any]  # what the answer must validate against
    worst_case_tokens: int  # longest possible answer, plus the stop token
    max_items: int = 0
    max_points: int = 0
    max_chars: int = 0
    # When set, decoding uses this EBNF grammar (equivalent to ``schema``) instead of
    # compiling the schema: xgrammar cannot compile long bounded string patterns.
    ebnf: str | None = None


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _coordinate(scale: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "maximum": scale}


def _point(scale: int, with_visibility: bool = False) -> dict[str, Any]:
    items = [_coordinate(scale), _coordinate(scale)]
    if with_visibility:
        items.append({"type": "integer", "minimum": 0, "maximum": 2})
    return {"type": "array", "prefixItems": items, "items": False,
            "minItems": len(items), "maxItems": len(items)}


def interpret_grammar(fields: Sequence[str], limits: Limits, budget: int) -> PhaseGrammar:
    def build(chars: int) -> PhaseGrammar:
        text = {"type": "string", "pattern": f"^{_TEXT_CHARS}{{0,{chars}}}$"}
        schema = {"type": "object", "properties": {f: text for f in fields}, "required": list(fields),
                  "additionalProperties": False}
        worst = _dump({f: "x" * chars for f in fields})
        members = ' "," '.join(f"{json.dumps(_dump(f) + ':')} text" for f in fields)
        ebnf = f'root ::= "{{" {members} "}}"\ntext ::= "\\"" {_TEXT_CHARS}{{0,{chars}}} "\\""'
        return PhaseGrammar("interpret", schema, len(worst) + 1, max_chars=chars, ebnf=ebnf)

    chars = limits.max_field_chars
    while (grammar := build(chars)).worst_case_tokens > budget:
        if chars == 1:
            raise BudgetTooSmall(f"interpret: {budget} tokens cannot hold {len(fields)} fields")
        chars = max(1, chars - max(1, (grammar.worst_case_tokens - budget) // len(fields)))
    return grammar


def classify_grammar(labels: Sequence[str], budget: int) -> PhaseGrammar:
    schema = {"type": "object", "properties": {"label": {"enum": list(labels)}}, "required": ["label"],
              "additionalProperties": False}
    worst = max(len(_dump({"label": label})) for label in labels) + 1
    if worst > budget:
        raise BudgetTooSmall(f"classify: {budget} tokens cannot hold the longest label ({worst})")
    return PhaseGrammar("classify", schema, worst)


def _item(phase: str, labels: Sequence[str], scale: int, points: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(schema, longest instance) of one list item."""
    properties: dict[str, Any] = {
        "bbox_2d": {"type": "array", "items": _coordinate(scale), "minItems": 4, "maxItems": 4},
        "label": {"enum": list(labels)},
    }
    longest = {"bbox_2d": [scale] * 4, "label": max(labels, key=len)}
    if phase == "segment":
        properties["mask"] = {"type": "array", "items": _point(scale), "minItems": 3, "maxItems": points}
        longest["mask"] = [[scale, scale]] * points
    elif phase == "keypoints":
        properties["keypoints"] = {"type": "array", "items": _point(scale, with_visibility=True),
                                   "minItems": 1, "maxItems": points}
        longest["keypoints"] = [[scale, scale, 2]] * points
    schema = {"type": "object", "properties": properties, "required": list(properties),
              "additionalProperties": False}
    return schema, longest


def items_grammar(phase: str, labels: Sequence[str], limits: Limits, budget: int, scale: int = 1000) -> PhaseGrammar:
    """detect / keypoints / segment: a list of items limited to ``labels``."""
    if phase not in ("detect", "keypoints", "segment"):
        raise ValueError(f"not a list phase: {phase}")
    if not labels:
        raise ValueError(f"{phase}: no classes requested")
    max_points = {"segment": limits.max_polygon_points, "keypoints": limits.max_keypoints}.get(phase, 0)
    min_points = {"segment": 3, "keypoints": 1}.get(phase, 0)

    def build(items: int, points: int) -> PhaseGrammar:
        item_schema, longest = _item(phase, labels, scale, points)
        schema = {"type": "array", "items": item_schema, "minItems": 0, "maxItems": items}
        return PhaseGrammar(phase, schema, len(_dump([longest] * items)) + 1, max_items=items, max_points=points)

    items, points = limits.max_items, max_points
    item_chars = build(1, points).worst_case_tokens - 3  # without "[", "]" and the stop token
    items = max(1, min(items, (budget - 3 + 1) // (item_chars + 1)))
    grammar = build(items, points)
    while grammar.worst_case_tokens > budget and points > min_points:
        points -= 1
        grammar = build(items, points)
    if grammar.worst_case_tokens > budget:
        raise BudgetTooSmall(f"{phase}: {budget} tokens cannot hold one item ({grammar.worst_case_tokens})")
    return grammar
