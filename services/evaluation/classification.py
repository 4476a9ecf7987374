"""Classification accuracy: the job's view label against the ground truth's, exactly and
ignoring case. A job without a classification counts as wrong."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Accuracy:
    n: int
    exact: float | None  # None when there is nothing to compare
    case_insensitive: float | None


def accuracy(pairs: Sequence[tuple[str, str | None]]) -> Accuracy:
    """``pairs``: (ground-truth label, predicted label or None)."""
    if not pairs:
        return Accuracy(n=0, exact=None, case_insensitive=None)
    exact = sum(1 for truth, predicted in pairs if predicted is not None and predicted == truth)
    folded = sum(1 for truth, predicted in pairs if predicted is not None and predicted.casefold() == truth.casefold())
    return Accuracy(n=len(pairs), exact=exact / len(pairs), case_insensitive=folded / len(pairs))
