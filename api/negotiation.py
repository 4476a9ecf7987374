"""Content negotiation on the ``Accept`` header (RFC 9110 12.5.1): q-values, ``type/*`` and
``*/*``, the most specific range deciding for each media type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Offer:
    """A media type the route can answer with, and other types a client may name it by
    (``application/json`` for ``application/dicom+json``)."""

    media_type: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class MediaRange:
    type: str
    subtype: str
    q: float


def parse_accept(header: str) -> list[MediaRange]:
    """The media ranges of an Accept header; a range that does not parse is left out."""
    ranges: list[MediaRange] = []
    for element in header.split(","):
        media, *params = (p.strip() for p in element.split(";"))
        kind, slash, subtype = media.lower().partition("/")
        if not slash or not kind or not subtype or (kind == "*" and subtype != "*"):
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                q = _qvalue(value.strip())
                break  # what follows q= are accept-extensions, not media type parameters
        if q >= 0:
            ranges.append(MediaRange(kind, subtype, q))
    return ranges


def _qvalue(text: str) -> float:
    """The weight, or -1 when it is not a qvalue (0 to 1, at most three decimals)."""
    whole, _, decimals = text.partition(".")
    if whole not in ("0", "1") or len(decimals) > 3 or not (decimals.isdigit() or decimals == ""):
        return -1
    value = float(text)
    return value if value <= 1 else -1


def quality(ranges: Sequence[MediaRange], offer: Offer) -> float:
    """The weight the client gives ``offer``: that of the most specific range that matches it
    (its own type, then an alias, then ``type/*``, then ``*/*``); 0 when none does."""
    best: tuple[int, float] = (-1, 0.0)
    names = [offer.media_type, *offer.aliases]
    for r in ranges:
        for rank, name in enumerate(names):
            kind, _, subtype = name.partition("/")
            if (r.type, r.subtype) == (kind, subtype):
                specificity = 3 if rank == 0 else 2
            elif r.type == kind and r.subtype == "*":
                specificity = 1
            elif r.type == "*":
                specificity = 0
            else:
                continue
            if specificity > best[0]:
                best = (specificity, r.q)
    return best[1]


def negotiate(header: str | None, offers: Sequence[Offer]) -> str | None:
    """The media type to answer with: the offer the client weighs highest (the first offer on a
    tie, and when there is no Accept header, or none that parses); None when the client accepts
    none of them (406)."""
    ranges = parse_accept(header or "")
    if not ranges:
        return offers[0].media_type
    weights = [quality(ranges, offer) for offer in offers]
    best = max(weights)
    return offers[weights.index(best)].media_type if best > 0 else None
