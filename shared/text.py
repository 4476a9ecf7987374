"""What counts as printable in a one-line name or reference (a key's name, a job's
``external_id``): no control or format characters, no line or paragraph separators. A tab or a
newline breaks listings, CSV rows and logs; a right-to-left override (U+202E) or a zero-width
space makes one reference look like another."""

from __future__ import annotations

import unicodedata

UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def unprintable(text: str) -> list[str]:
    """The characters of ``text`` that are not printable, each once, in code point order."""
    return sorted({c for c in text if unicodedata.category(c) in UNPRINTABLE_CATEGORIES})


def code_points(chars: list[str]) -> str:
    """``U+0009, U+202E``: how a message names characters that would not show."""
    return ", ".join(f"U+{ord(c):04X}" for c in chars)
