"""Sonographer score aggregation: the numbers of the model card's expert-validation table.

Scores (MODEL_FACTS.md): 1 acceptable, 2 minor issues, 3 major errors; 0 = not assessable,
counted in ``n`` and the distribution but left out of the mean and the perfect rate. Only
CURRENT reviews count (the ``reviews`` table; superseded versions live in
``review_revisions`` and are never read here).

Rounding follows the model card, so that the service's report and the card can be compared
figure by figure: a mean and a perfect rate are reported to 3 decimal places (half up), and
``overall_mean`` is the mean of the two REPORTED dimension means, again to 3 places. For the
card's HITL table that gives (1.286 + 1.449) / 2 = 1.3675 -> 1.368, as the card prints; the
unrounded value would be 134/98 = 1.3673. ``overall_mean`` is null when either dimension has
no score 1-3 (a mean of one dimension alone is not the card's overall figure).

Rows are fetched with SQLAlchemy and aggregated in Python; the view label is read from the
result document (``classification.label``) inside the query, so documents are not loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey, JobMode, Result, Review, ReviewDimension

from .agreement import PairAgreement, pair_agreements
from .filters import GroupBy, ReportFilters

SCORES = (0, 1, 2, 3)
DIMENSIONS = (ReviewDimension.interpretation, ReviewDimension.annotation)
PLACES = Decimal("0.001")
OVERALL_KEY = "all"


def rounded(value: Decimal) -> Decimal:
    return value.quantize(PLACES, rounding=ROUND_HALF_UP)


@dataclass(frozen=True)
class ScoreRow:
    """One current review, with what it is grouped by."""

    job_id: str
    reviewer_id: str
    reviewer_name: str
    dimension: ReviewDimension
    score: int
    mode: JobMode
    model: str | None
    label: str | None  # the model's view label
    created_at: datetime
    reviewed_label: str | None = None  # the view label as the reviewers left it (see fetch_rows)


@dataclass(frozen=True)
class DimensionStats:
    n: int
    distribution: dict[int, int]
    mean: Decimal | None
    perfect_rate: Decimal | None

    @classmethod
    def of(cls, scores: Iterable[int]) -> DimensionStats:
        distribution = dict.fromkeys(SCORES, 0)
        for score in scores:
            distribution[score] += 1
        assessed = distribution[1] + distribution[2] + distribution[3]
        if assessed == 0:
            return cls(n=sum(distribution.values()), distribution=distribution, mean=None, perfect_rate=None)
        total = sum(s * distribution[s] for s in (1, 2, 3))
        return cls(n=sum(distribution.values()), distribution=distribution,
                   mean=rounded(Decimal(total) / Decimal(assessed)),
                   perfect_rate=rounded(Decimal(distribution[1]) / Decimal(assessed)))

    def as_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": _num(self.mean), "perfect_rate": _num(self.perfect_rate),
                "distribution": {str(s): self.distribution[s] for s in SCORES}}


def _num(value: Decimal | None) -> float | None:
    return float(value) if value is not None else None


@dataclass(frozen=True)
class Group:
    key: str | None
    cases: int
    interpretation: DimensionStats
    annotation: DimensionStats
    reviewer_id: str | None = None

    @property
    def overall_mean(self) -> Decimal | None:
        a, b = self.interpretation.mean, self.annotation.mean
        return None if a is None or b is None else rounded((a + b) / 2)

    def dimension(self, dimension: ReviewDimension) -> DimensionStats:
        return self.interpretation if dimension is ReviewDimension.interpretation else self.annotation

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "reviewer_id": self.reviewer_id, "cases": self.cases,
                "interpretation": self.interpretation.as_json(), "annotation": self.annotation.as_json(),
                "overall_mean": _num(self.overall_mean)}


# group_by -> the key of a row; reviewers are grouped by key id, shown by name; days are
# the review's date in the report's time zone.
KEYS: dict[GroupBy, Callable[[ScoreRow], str | None]] = {
    GroupBy.mode: lambda r: r.mode.value,
    GroupBy.model: lambda r: r.model,
    GroupBy.label: lambda r: r.label,
    GroupBy.reviewed_label: lambda r: r.reviewed_label,
    GroupBy.reviewer: lambda r: r.reviewer_id,
}


def key_of(group_by: GroupBy, zone: tzinfo) -> Callable[[ScoreRow], str | None]:
    if group_by is GroupBy.day:
        return lambda r: r.created_at.astimezone(zone).date().isoformat()
    return KEYS[group_by]


def make_group(key: str | None, rows: Sequence[ScoreRow], *, reviewer_id: str | None = None) -> Group:
    return Group(
        key=key,
        cases=len({r.job_id for r in rows}),
        interpretation=DimensionStats.of(r.score for r in rows if r.dimension is ReviewDimension.interpretation),
        annotation=DimensionStats.of(r.score for r in rows if r.dimension is ReviewDimension.annotation),
        reviewer_id=reviewer_id,
    )


def _sort_key(key: str | None) -> tuple[bool, str, str]:
    return (key is None, (key or "").casefold(), key or "")


def aggregate(rows: Sequence[ScoreRow], group_by: GroupBy | None, zone: tzinfo = UTC) -> list[Group]:
    """One group per value of ``group_by`` (None: one overall group, keyed "all", present even
    when no review matched). Groups are sorted by key (days chronologically), unknown last."""
    if group_by is None:
        return [make_group(OVERALL_KEY, rows)]
    key = key_of(group_by, zone)
    buckets: dict[str | None, list[ScoreRow]] = {}
    for row in rows:
        buckets.setdefault(key(row), []).append(row)
    if group_by is GroupBy.reviewer:
        names = {row.reviewer_id: row.reviewer_name for row in rows}
        groups = [make_group(names[k] if k else None, b, reviewer_id=k) for k, b in buckets.items()]
        return sorted(groups, key=lambda g: (*_sort_key(g.key), g.reviewer_id or ""))
    return [make_group(k, buckets[k]) for k in sorted(buckets, key=_sort_key)]


def fetch_rows(session: Session, filters: ReportFilters) -> list[ScoreRow]:
    """The current reviews in the window (oldest first), with reviewer name and view label."""
    label = Result.document[("classification", "label")].as_string()
    stmt = (
        select(Review.job_id, Review.reviewer_key_id, ApiKey.name, Review.dimension, Review.score, Review.job_mode,
               Review.model_revision, Review.created_at, label)
        .join(ApiKey, ApiKey.id == Review.reviewer_key_id)
        .outerjoin(Result, Result.job_id == Review.job_id)
        .order_by(Review.created_at, Review.id)
    )
    if filters.start is not None:
        stmt = stmt.where(Review.created_at >= filters.start)
    if filters.end is not None:
        stmt = stmt.where(Review.created_at < filters.end)
    if filters.mode is not None:
        stmt = stmt.where(Review.job_mode == filters.mode)
    found = session.execute(stmt).all()
    corrected = corrected_labels(session, {row[0] for row in found})
    return [
        ScoreRow(job_id=job_id, reviewer_id=reviewer_id, reviewer_name=name, dimension=ReviewDimension(dimension),
                 score=int(score), mode=JobMode(mode), model=model, label=lab, created_at=created,
                 reviewed_label=corrected.get(job_id, lab))
        for job_id, reviewer_id, name, dimension, score, mode, model, created, lab in found
    ]


def corrected_labels(session: Session, job_ids: set[str]) -> dict[str, str]:
    """The view label each job's reviewers corrected it to: from the current interpretation
    review that corrects it, the latest written (created or amended) when several do, whatever
    the report's window (a correction is a fact about the image, not about the period). Jobs
    whose label no reviewer corrected are left out: their reviewed label is the model's."""
    label = Review.corrections[("label",)].as_string()
    written = func.coalesce(Review.amended_at, Review.created_at)
    out: dict[str, str] = {}
    ids = sorted(job_ids)
    for chunk in (ids[i:i + 500] for i in range(0, len(ids), 500)):  # bound the IN list
        stmt = (select(Review.job_id, label)
                .where(Review.job_id.in_(chunk), Review.dimension == ReviewDimension.interpretation,
                       label.is_not(None))
                .order_by(written, Review.id))
        out.update({job_id: value for job_id, value in session.execute(stmt) if value})  # the latest wins
    return out


@dataclass(frozen=True)
class ScoreReport:
    filters: ReportFilters
    group_by: GroupBy | None
    groups: list[Group]
    total: Group
    agreement: list[PairAgreement]
    rows: list[ScoreRow] = field(repr=False)
    generated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "filters": self.filters.as_json(),
            "group_by": self.group_by.value if self.group_by else None,
            "groups": [g.as_json() for g in self.groups],
            "agreement": [a.as_json() for a in self.agreement],
            "total": self.total.as_json(),
            "reviews": len(self.rows),
            "warnings": list(self.filters.warnings),
            "generated_at": self.generated_at.isoformat().replace("+00:00", "Z"),
        }

    def breakdown(self, group_by: GroupBy | None) -> list[Group]:
        """The same reviews grouped another way (the HTML page's charts)."""
        return aggregate(self.rows, group_by, self.filters.zone)


def build_report(rows: list[ScoreRow], filters: ReportFilters, group_by: GroupBy | None,
                 *, now: datetime | None = None) -> ScoreReport:
    return ScoreReport(filters=filters, group_by=group_by, groups=aggregate(rows, group_by, filters.zone),
                       total=make_group(OVERALL_KEY, rows), agreement=pair_agreements(rows), rows=rows,
                       generated_at=(now or datetime.now(UTC)).replace(microsecond=0))


def score_report(session: Session, filters: ReportFilters, group_by: GroupBy | None) -> ScoreReport:
    return build_report(fetch_rows(session, filters), filters, group_by)
