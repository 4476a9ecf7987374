"""Quadratic-weighted Cohen's kappa: published examples, a hand computation from the formula,
scikit-learn, the degenerate cases, and the agreement table through the API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from fractions import Fraction
from itertools import product

import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import cohen_kappa_score

from services.reports import pair_agreements, quadratic_kappa
from shared.db.models import ReviewDimension
from tests.api.conftest import Keys

from .helpers import ANNOTATION, INTERPRETATION, T0, Seeder


def kappa_by_hand(a: list[int], b: list[int], labels: list[int]) -> Fraction:
    """kappa = 1 - sum(w * O) / sum(w * E), exactly (Cohen 1968, "Weighted kappa", Psychological
    Bulletin 70(4):213-220): O[i][j] counts items rater a put in category i and rater b in j,
    E[i][j] = rowsum_i * colsum_j / N (chance agreement from the marginals), and the quadratic
    disagreement weight w[i][j] = (i - j)^2 / (k - 1)^2."""
    k, n = len(labels), len(a)
    index = {label: i for i, label in enumerate(labels)}
    observed = [[0] * k for _ in range(k)]
    for x, y in zip(a, b, strict=True):
        observed[index[x]][index[y]] += 1
    rows = [sum(observed[i]) for i in range(k)]
    cols = [sum(observed[i][j] for i in range(k)) for j in range(k)]
    weight = [[Fraction((i - j) ** 2, (k - 1) ** 2) for j in range(k)] for i in range(k)]
    disagreement = sum(weight[i][j] * observed[i][j] for i, j in product(range(k), range(k)))
    chance = sum(weight[i][j] * Fraction(rows[i] * cols[j], n) for i, j in product(range(k), range(k)))
    return 1 - Fraction(disagreement) / chance


# Maplesoft's documentation of EssayTools[QuadraticWeightedKappa] (Maple help, "Examples"): two
# graders' scores of nine essays; Min and Max come from the data (1 and 10), and Maple prints
# 0.758620689655172 and 0.438095238095238.
ESSAYS_A = [9, 7, 8, 7, 6, 8, 3, 5, 10]
ESSAYS_B = [8, 8, 6, 6, 7, 6, 1, 4, 8]
ESSAYS_C = [3, 5, 6, 6, 7, 6, 1, 4, 8]


@pytest.mark.parametrize(("b", "published", "exact"), [(ESSAYS_B, 0.758620689655172, Fraction(22, 29)),
                                                       (ESSAYS_C, 0.438095238095238, Fraction(46, 105))])
def test_a_published_example(b: list[int], published: float, exact: Fraction) -> None:
    labels = list(range(1, 11))
    assert kappa_by_hand(ESSAYS_A, b, labels) == exact
    assert float(exact) == pytest.approx(published, abs=1e-14)
    got = quadratic_kappa(ESSAYS_A, b, labels=labels)
    assert got.reason is None and got.value == pytest.approx(published, abs=1e-12)
    assert cohen_kappa_score(ESSAYS_A, b, weights="quadratic", labels=labels) == pytest.approx(published, abs=1e-12)


def test_a_three_point_table_computed_by_hand() -> None:
    """Our scale (1 acceptable, 2 minor, 3 major), 28 jobs. Rater a in rows, b in columns:

            b=1  b=2  b=3 | row
        a=1  10    3    0 |  13
        a=2   2    6    2 |  10
        a=3   0    1    4 |   5
        col  12   10    6 |  28

    Weights: 0 on the diagonal, 1/4 one step apart, 1 two apart.
    sum(w*O) = (3 + 2 + 2 + 1) / 4 = 2.
    sum(w*E) = (13*10 + 10*12 + 10*6 + 5*10) / 28 / 4 + (13*6 + 5*12) / 28 = 45/14 + 69/14 = 57/7.
    kappa = 1 - 2 / (57/7) = 1 - 14/57 = 43/57 = 0.75439."""
    table = [[10, 3, 0], [2, 6, 2], [0, 1, 4]]
    a = [i + 1 for i in range(3) for j in range(3) for _ in range(table[i][j])]
    b = [j + 1 for i in range(3) for j in range(3) for _ in range(table[i][j])]
    assert kappa_by_hand(a, b, [1, 2, 3]) == Fraction(43, 57)
    assert quadratic_kappa(a, b).value == pytest.approx(43 / 57, abs=1e-12)
    assert cohen_kappa_score(a, b, weights="quadratic", labels=[1, 2, 3]) == pytest.approx(43 / 57, abs=1e-12)


@pytest.mark.parametrize(("a", "b", "value", "reason"), [
    ([], [], None, "fewer than 2"),
    ([2], [2], None, "fewer than 2"),
    ([1, 1, 1], [1, 1, 1], None, "undefined"),  # 0/0
    ([1, 1, 1], [2, 2, 2], None, "undefined"),  # O equals E: a meaningless 0
    ([1, 1, 1], [1, 2, 3], 0.0, "0 by construction"),
    ([1, 2, 3], [1, 2, 3], 1.0, None),
    ([1, 3], [3, 1], -1.0, None),
])
def test_degenerate_cases_give_no_kappa_and_a_reason(a: list[int], b: list[int], value: float | None,
                                                     reason: str | None) -> None:
    got = quadratic_kappa(a, b)
    assert got.value == (pytest.approx(value) if value is not None else None)
    assert (got.reason is None) if reason is None else (reason in (got.reason or ""))


def test_paired_scores_must_pair() -> None:
    with pytest.raises(ValueError, match="different lengths"):
        quadratic_kappa([1, 2], [1])


@dataclass(frozen=True)
class Row:
    job_id: str
    reviewer_id: str
    reviewer_name: str
    dimension: ReviewDimension
    score: int


def test_pairs_use_only_jobs_both_scored_1_to_3() -> None:
    rows = [Row(f"j{i}", "id-b", "bea", INTERPRETATION, s) for i, s in enumerate([1, 2, 3, 0, 2])]
    rows += [Row(f"j{i}", "id-a", "ann", INTERPRETATION, s) for i, s in enumerate([1, 2, 2, 1])]
    rows += [Row("j9", "id-c", "cid", INTERPRETATION, 1)]  # shares no job: no pair
    rows += [Row("j0", "id-c", "cid", ANNOTATION, 2), Row("j0", "id-a", "ann", ANNOTATION, 0)]  # a 0: no pair
    (pair,) = pair_agreements(rows)
    assert (pair.reviewer_a[1], pair.reviewer_b[1], pair.jobs) == ("ann", "bea", 3)  # j3 has a 0: left out
    assert pair.kappa.value == pytest.approx(float(kappa_by_hand([1, 2, 2], [1, 2, 3], [1, 2, 3])))
    assert float(pair.exact_agreement) == 0.667


def test_the_agreement_table_through_the_api(client: TestClient, keys: Keys, seeder: Seeder) -> None:
    jobs = seeder.jobs(6)
    ann, bea = [1, 2, 3, 1, 2, 3], [1, 2, 2, 1, 3, 3]
    seeder.reviews(jobs, INTERPRETATION, ann, reviewer="ann")
    seeder.reviews(jobs, INTERPRETATION, bea, reviewer="bea", at=T0 + timedelta(hours=1))
    seeder.reviews(jobs[:1], INTERPRETATION, [2], reviewer="cid")  # one shared job: no kappa
    seeder.reviews(jobs[:2], ANNOTATION, [1, 1], reviewer="ann")
    seeder.reviews(jobs[:2], ANNOTATION, [1, 1], reviewer="bea")  # both constant: no kappa
    response = client.get("/v1/reports/scores", headers=keys.qa.headers)
    assert response.status_code == 200
    table = {(p["dimension"], p["reviewer_a"]["name"], p["reviewer_b"]["name"]): p
             for p in response.json()["agreement"]}
    assert list(table) == [("interpretation", "ann", "bea"), ("interpretation", "ann", "cid"),
                           ("interpretation", "bea", "cid"), ("annotation", "ann", "bea")]
    ab = table[("interpretation", "ann", "bea")]
    expected = cohen_kappa_score(ann, bea, weights="quadratic", labels=[1, 2, 3])
    assert (ab["jobs"], ab["kappa"], ab["reason"]) == (6, round(expected, 3), None)
    assert ab["exact_agreement"] == 0.667 and ab["reviewer_a"]["id"] == seeder.reviewers["ann"]
    assert table[("interpretation", "ann", "cid")]["kappa"] is None
    assert "fewer than 2" in table[("interpretation", "ann", "cid")]["reason"]
    assert table[("annotation", "ann", "bea")]["kappa"] is None
    assert table[("annotation", "ann", "bea")]["exact_agreement"] == 1.0
