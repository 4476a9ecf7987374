"""Inter-rater agreement: quadratic-weighted Cohen's kappa per reviewer pair and dimension.

Only jobs that BOTH reviewers scored 1-3 in that dimension count (0 = not assessable is no
rating on the ordinal scale). kappa = 1 - sum(w * O) / sum(w * E) with w_ij = (i - j)^2 /
(k - 1)^2, O the observed and E the chance-expected confusion matrix (Cohen 1968), computed by
scikit-learn over the fixed labels 1, 2, 3 (so a score nobody gave still counts as a category).

Degenerate cases give ``kappa = None`` with a ``reason``, never an error: fewer than 2 shared
jobs; both reviewers constant (each gave one score to every shared job: O equals E, so kappa
is 0/0 or a meaningless 0); or any other undefined value. When only one reviewer is constant,
kappa is 0 by construction (O equals E); it is reported, with a reason saying why.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from itertools import combinations
from typing import Any, Protocol

from shared.db.models import ReviewDimension

LABELS = (1, 2, 3)
MIN_SHARED_JOBS = 2


class Rated(Protocol):
    @property
    def job_id(self) -> str: ...
    @property
    def reviewer_id(self) -> str: ...
    @property
    def reviewer_name(self) -> str: ...
    @property
    def dimension(self) -> ReviewDimension: ...
    @property
    def score(self) -> int: ...


@dataclass(frozen=True)
class Kappa:
    value: float | None
    reason: str | None = None


def quadratic_kappa(a: Sequence[int], b: Sequence[int], labels: Sequence[int] = LABELS) -> Kappa:
    """Quadratic-weighted Cohen's kappa of two raters' paired scores, with degenerate cases
    answered as ``Kappa(None, reason)``."""
    if len(a) != len(b):
        raise ValueError(f"paired scores of different lengths: {len(a)} and {len(b)}")
    if len(a) < MIN_SHARED_JOBS:
        return Kappa(None, f"fewer than {MIN_SHARED_JOBS} jobs scored by both")
    constant_a, constant_b = len(set(a)) == 1, len(set(b)) == 1
    if constant_a and constant_b:
        same = "the same score" if a[0] == b[0] else "one score each"
        return Kappa(None, f"both reviewers gave {same} to every shared job: kappa is undefined")
    from sklearn.metrics import cohen_kappa_score  # imported here: a second of start-up otherwise

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(cohen_kappa_score(list(a), list(b), weights="quadratic", labels=list(labels)))
    if not math.isfinite(value):
        return Kappa(None, "kappa is undefined for these scores (no disagreement is possible by chance)")
    if constant_a or constant_b:
        return Kappa(value, "one reviewer gave the same score to every shared job: kappa is 0 by construction")
    return Kappa(value)


@dataclass(frozen=True)
class PairAgreement:
    dimension: ReviewDimension
    reviewer_a: tuple[str, str]  # (key id, name)
    reviewer_b: tuple[str, str]
    jobs: int
    exact_agreement: Decimal  # share of the shared jobs given the same score (3 places)
    kappa: Kappa

    def as_json(self) -> dict[str, Any]:
        return {
            "dimension": self.dimension.value,
            "reviewer_a": {"id": self.reviewer_a[0], "name": self.reviewer_a[1]},
            "reviewer_b": {"id": self.reviewer_b[0], "name": self.reviewer_b[1]},
            "jobs": self.jobs,
            "kappa": round(self.kappa.value, 3) if self.kappa.value is not None else None,
            "exact_agreement": float(self.exact_agreement),
            "reason": self.kappa.reason,
        }


def pair_agreements(rows: Iterable[Rated]) -> list[PairAgreement]:
    """Every reviewer pair that both scored (1-3) at least one job in a dimension, per
    dimension; sorted by dimension, then by reviewer names."""
    by_dimension: dict[ReviewDimension, dict[str, dict[str, int]]] = {}
    names: dict[str, str] = {}
    for row in rows:
        if row.score not in LABELS:
            continue
        names[row.reviewer_id] = row.reviewer_name
        by_dimension.setdefault(row.dimension, {}).setdefault(row.reviewer_id, {})[row.job_id] = row.score
    out: list[PairAgreement] = []
    for dimension in (ReviewDimension.interpretation, ReviewDimension.annotation):
        reviewers = by_dimension.get(dimension, {})
        ordered = sorted(reviewers, key=lambda rid: (names[rid].casefold(), rid))
        for ra, rb in combinations(ordered, 2):
            shared = sorted(reviewers[ra].keys() & reviewers[rb].keys())
            if not shared:
                continue
            a = [reviewers[ra][job] for job in shared]
            b = [reviewers[rb][job] for job in shared]
            same = sum(x == y for x, y in zip(a, b, strict=True))
            out.append(PairAgreement(
                dimension=dimension, reviewer_a=(ra, names[ra]), reviewer_b=(rb, names[rb]), jobs=len(shared),
                exact_agreement=(Decimal(same) / Decimal(len(shared))).quantize(Decimal("0.001"), ROUND_HALF_UP),
                kappa=quadratic_kappa(a, b)))
    return out
