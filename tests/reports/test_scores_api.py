"""``GET /v1/reports/scores`` on PostgreSQL and SQLite: the model card's HITL table, 0 scores,
amended reviews, every grouping, the time window, CSV, and refused parameters."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.reports import csv_columns
from services.reports.filters import GroupBy
from shared.db.models import JobMode, Review, ReviewRevision
from tests.api.conftest import Keys
from tests.api.helpers import assert_problem, audit_events

from .helpers import ANNOTATION, INTERPRETATION, T0, Seeder, group, seed_model_card

SCORES = "/v1/reports/scores"

def get(client: TestClient, key: Any, **params: str) -> dict[str, Any]:
    response = client.get(SCORES, params=params, headers=key.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    return body


def stats(dimension: dict[str, Any]) -> tuple[int, float | None, float | None]:
    return dimension["n"], dimension["mean"], dimension["perfect_rate"]


def test_the_model_cards_hitl_table_is_reproduced(client: TestClient, keys: Keys, seeder: Seeder,
                                                  sm: sessionmaker[Session]) -> None:
    seed_model_card(seeder)
    with sm() as session:  # the two superseded versions are there, and must not count
        assert session.scalar(select(func.count()).select_from(ReviewRevision)) == 2
    body = get(client, keys.qa, mode="hitl")
    assert body["group_by"] is None
    assert body["filters"] == {"from": None, "to": None, "mode": "hitl", "tz": "UTC"}
    (overall,) = body["groups"]
    assert overall["key"] == "all" and overall["cases"] == 49
    i, a = overall["interpretation"], overall["annotation"]
    assert i["distribution"] == {"0": 0, "1": 36, "2": 12, "3": 1}
    assert a["distribution"] == {"0": 0, "1": 31, "2": 14, "3": 4}
    assert (i["n"], round(i["mean"], 3), round(100 * i["perfect_rate"], 1)) == (49, 1.286, 73.5)
    assert (a["n"], round(a["mean"], 3), round(100 * a["perfect_rate"], 1)) == (49, 1.449, 63.3)
    # The card's overall is the mean of its two rounded means: (1.286 + 1.449) / 2 = 1.3675 -> 1.368
    # (unrounded it would be 134/98 = 1.3673); the report follows the card.
    assert round(overall["overall_mean"], 3) == 1.368
    assert body["total"]["cases"] == 49 and body["reviews"] == 98
    assert body["agreement"] == []  # one reviewer only

    by_mode = get(client, keys.qa, group_by="mode")
    assert [g["key"] for g in by_mode["groups"]] == ["autonomous", "hitl"]
    assert group(by_mode, "hitl")["overall_mean"] == 1.368
    auto = group(by_mode, "autonomous")
    assert (auto["cases"], auto["interpretation"]["mean"], auto["annotation"]["perfect_rate"]) == (5, 3.0, 0.0)


def test_not_assessable_scores_count_in_n_and_distribution_but_not_in_means(
        client: TestClient, keys: Keys, seeder: Seeder) -> None:
    jobs = seeder.jobs(4)
    seeder.reviews(jobs, INTERPRETATION, [0, 1, 2, 0])
    seeder.reviews(jobs, ANNOTATION, [0, 0, 0, 0])
    (overall,) = get(client, keys.admin)["groups"]
    assert overall["cases"] == 4
    assert stats(overall["interpretation"]) == (4, 1.5, 0.5)
    assert overall["interpretation"]["distribution"] == {"0": 2, "1": 1, "2": 1, "3": 0}
    assert stats(overall["annotation"]) == (4, None, None)  # nothing assessable: no mean, no rate
    assert overall["overall_mean"] is None  # the overall needs both dimension means


def test_no_reviews_gives_one_empty_overall_group(client: TestClient, keys: Keys) -> None:
    body = get(client, keys.qa)
    (overall,) = body["groups"]
    assert overall["cases"] == 0 and stats(overall["interpretation"]) == (0, None, None)
    assert get(client, keys.qa, group_by="label")["groups"] == []


# --- grouping --------------------------------------------------------------------------------

D1, D2 = T0, T0 + timedelta(days=1)


def seed_mixed(seeder: Seeder) -> None:
    """A: 2 HITL jobs (BPD_PLANE, rev-1, day 1, sono-1); B: 2 autonomous jobs (FL_PLANE, rev-2,
    day 2, sono-2); C: 1 autonomous job without a result or model (day 2, sono-1)."""
    a = seeder.jobs(2, mode=JobMode.hitl, label="BPD_PLANE", model="rev-1", at=D1)
    seeder.reviews(a, INTERPRETATION, [1, 2], reviewer="sono-1", at=D1)
    seeder.reviews(a, ANNOTATION, [1, 1], reviewer="sono-1", at=D1)
    b = seeder.jobs(2, mode=JobMode.autonomous, label="FL_PLANE", model="rev-2", at=D2)
    seeder.reviews(b, INTERPRETATION, [3, 0], reviewer="sono-2", at=D2)
    seeder.reviews(b, ANNOTATION, [2, 3], reviewer="sono-2", at=D2)
    c = seeder.jobs(1, mode=JobMode.autonomous, model=None, at=D2, with_result=False)
    seeder.reviews(c, INTERPRETATION, [2], reviewer="sono-1", at=D2)
    seeder.reviews(c, ANNOTATION, [0], reviewer="sono-1", at=D2)


A = (2, (2, 1.5, 0.5), (2, 1.0, 1.0), 1.25)
B = (2, (2, 3.0, 0.0), (2, 2.5, 0.0), 2.75)
C = (1, (1, 2.0, 0.0), (1, None, None), None)
B_AND_C = (3, (3, 2.5, 0.0), (3, 2.5, 0.0), 2.5)
# group_by -> [(key, (cases, interpretation (n, mean, perfect), annotation (...), overall))], in order
EXPECTED: dict[str, list[tuple[str | None, Any]]] = {
    "mode": [("autonomous", B_AND_C), ("hitl", A)],
    "model": [("rev-1", A), ("rev-2", B), (None, C)],
    "label": [("BPD_PLANE", A), ("FL_PLANE", B), (None, C)],
    "reviewed_label": [("BPD_PLANE", A), ("FL_PLANE", B), (None, C)],  # no review corrects a label here
    # sono-1: interpretation 1, 2, 2 -> 5/3 = 1.667; overall (1.667 + 1.000) / 2 = 1.3335 -> 1.334
    "reviewer": [("sono-1", (3, (3, 1.667, 0.333), (3, 1.0, 1.0), 1.334)), ("sono-2", B)],
    "day": [("2026-03-02", A), ("2026-03-03", B_AND_C)],
}


@pytest.mark.parametrize("group_by", [g.value for g in GroupBy])
def test_group_by_each_option(client: TestClient, keys: Keys, seeder: Seeder, group_by: str) -> None:
    seed_mixed(seeder)
    body = get(client, keys.qa, group_by=group_by)
    assert body["group_by"] == group_by
    got = [(g["key"], (g["cases"], stats(g["interpretation"]), stats(g["annotation"]), g["overall_mean"]))
           for g in body["groups"]]
    assert got == EXPECTED[group_by]
    assert body["total"]["cases"] == 5
    if group_by == "reviewer":
        assert {g["key"]: g["reviewer_id"] for g in body["groups"]} == seeder.reviewers
    else:
        assert all(g["reviewer_id"] is None for g in body["groups"])


def test_reviewed_label_groups_by_the_label_the_reviewers_corrected(client: TestClient, keys: Keys,
                                                                     seeder: Seeder) -> None:
    """``label`` is the model's view label; ``reviewed_label`` is the one the latest correcting
    interpretation review gave (an annotation review's corrections never hold a label), else
    the model's."""
    other = seeder.jobs(2, label="Other", at=T0)
    bpd = seeder.jobs(1, label="BPD_PLANE", at=T0)
    [corrected, _] = seeder.reviews(other, INTERPRETATION, [3, 1], reviewer="sono-1", at=T0)
    seeder.reviews(other[:1], ANNOTATION, [2], reviewer="sono-1", at=T0)
    [first, later] = [*seeder.reviews(bpd, INTERPRETATION, [2], reviewer="sono-1", at=T0),
                      *seeder.reviews(bpd, INTERPRETATION, [3], reviewer="sono-2", at=T0 + timedelta(hours=1))]
    with seeder.sm.begin() as session:
        for review_id, label in ((corrected, "BPD_PLANE"), (first, "FL_PLANE"), (later, "HC_PLANE")):
            session.get_one(Review, review_id).corrections = {"label": label}
    by_model = get(client, keys.qa, group_by="label")
    assert [(g["key"], g["cases"]) for g in by_model["groups"]] == [("BPD_PLANE", 1), ("Other", 2)]
    reviewed = get(client, keys.qa, group_by="reviewed_label")
    assert [(g["key"], g["cases"], g["interpretation"]["n"], g["annotation"]["n"]) for g in reviewed["groups"]] == [
        ("BPD_PLANE", 1, 1, 1), ("HC_PLANE", 1, 2, 0), ("Other", 1, 1, 0)]
    assert group(reviewed, "BPD_PLANE")["interpretation"]["mean"] == 3.0
    # the page shows the same grouping
    page = client.get(f"{SCORES}.html", params={"group_by": "reviewed_label"}, headers=keys.qa.headers).text
    assert "By view label as reviewed" in page and "HC_PLANE" in page


def test_mode_filter_and_grouping_combine(client: TestClient, keys: Keys, seeder: Seeder) -> None:
    seed_mixed(seeder)
    body = get(client, keys.qa, mode="autonomous", group_by="label")
    assert [g["key"] for g in body["groups"]] == ["FL_PLANE", None]


# --- the time window ---------------------------------------------------------------------------

TIMES = ["2026-03-01T23:59:59Z", "2026-03-02T00:00:00Z", "2026-03-02T12:00:00Z", "2026-03-03T00:00:00Z",
         "2026-03-04T10:00:00Z"]


@pytest.mark.parametrize(("params", "counted", "echo"), [
    ({}, 5, (None, None)),
    ({"from": "2026-03-02"}, 4, ("2026-03-02T00:00:00Z", None)),  # inclusive start of the day
    ({"to": "2026-03-02"}, 3, (None, "2026-03-03T00:00:00Z")),  # a date: that whole day included
    ({"from": "2026-03-02", "to": "2026-03-02"}, 2, ("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z")),
    ({"to": "2026-03-03T00:00:00Z"}, 3, (None, "2026-03-03T00:00:00Z")),  # a datetime end is exclusive
    ({"from": "2026-03-02T01:00:00+01:00"}, 4, ("2026-03-02T00:00:00Z", None)),  # offsets become UTC
    ({"from": "2026-03-02t12:00:00z", "to": "2026-03-04T10:00:00.000001Z"}, 3,
     ("2026-03-02T12:00:00Z", "2026-03-04T10:00:00.000001Z")),
    ({"from": "", "to": "", "mode": "", "group_by": ""}, 5, (None, None)),  # what a blank form sends
], ids=["none", "from-date", "to-date", "one-day", "to-datetime", "offset", "lowercase", "empty"])
def test_from_is_inclusive_and_to_exclusive(client: TestClient, keys: Keys, seeder: Seeder,
                                            params: dict[str, str], counted: int, echo: tuple[Any, Any]) -> None:
    jobs = seeder.jobs(len(TIMES))
    for job, at in zip(jobs, TIMES, strict=True):
        seeder.reviews([job], INTERPRETATION, [1], at=datetime.fromisoformat(at))
    body = get(client, keys.qa, **params)
    assert body["groups"][0]["interpretation"]["n"] == counted
    assert (body["filters"]["from"], body["filters"]["to"]) == echo
    assert body["warnings"] == []


def test_an_empty_window_is_answered_with_a_warning(client: TestClient, keys: Keys, seeder: Seeder) -> None:
    seeder.reviews(seeder.jobs(1), INTERPRETATION, [1], at=datetime(2026, 3, 3, tzinfo=UTC))
    body = get(client, keys.qa, **{"from": "2026-03-04", "to": "2026-03-01"})
    assert body["groups"][0]["cases"] == 0
    assert len(body["warnings"]) == 1 and "empty" in body["warnings"][0]


# --- CSV ---------------------------------------------------------------------------------------


def _parsed(value: str, like: Any) -> Any:
    if value == "":
        return None
    return int(value) if isinstance(like, int) else float(value) if isinstance(like, float) else value


@pytest.mark.parametrize("group_by", [None, "reviewer", "label"])
def test_csv_parses_back_to_the_json_groups(client: TestClient, keys: Keys, seeder: Seeder,
                                            group_by: str | None) -> None:
    seed_mixed(seeder)
    params = {"group_by": group_by} if group_by else {}
    body = get(client, keys.qa, **params)
    response = client.get(SCORES, params={**params, "format": "csv"}, headers=keys.qa.headers)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == "text/csv"
    assert "attachment" in response.headers["content-disposition"]
    reader = csv.DictReader(io.StringIO(response.text, newline=""))
    assert reader.fieldnames == csv_columns(GroupBy(group_by) if group_by else None)
    rows = list(reader)
    assert len(rows) == len(body["groups"])
    for row, g in zip(rows, body["groups"], strict=True):
        flat: dict[str, Any] = {"key": g["key"], "cases": g["cases"], "overall_mean": g["overall_mean"]}
        if group_by == "reviewer":
            flat["reviewer_id"] = g["reviewer_id"]
        for dim in ("interpretation", "annotation"):
            d = g[dim]
            flat |= {f"{dim}_n": d["n"], f"{dim}_mean": d["mean"], f"{dim}_perfect_rate": d["perfect_rate"]}
            flat |= {f"{dim}_{s}": d["distribution"][str(s)] for s in range(4)}
        # A null JSON value is an empty cell; numbers read back equal.
        assert {c: _parsed(row[c], flat[c] if flat[c] is not None else 0.0) for c in flat} == flat


def test_csv_cells_that_a_spreadsheet_would_run_are_defused(client: TestClient, keys: Keys,
                                                            seeder: Seeder) -> None:
    jobs = seeder.jobs(1, label="=HYPERLINK(\"http://x\")")
    seeder.reviews(jobs, INTERPRETATION, [1])
    response = client.get(SCORES, params={"group_by": "label", "format": "csv"}, headers=keys.qa.headers)
    (row,) = list(csv.DictReader(io.StringIO(response.text, newline="")))
    assert row["key"] == "'=HYPERLINK(\"http://x\")"


# --- refused parameters and the audit trail ------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"from": "yesterday"},
    {"from": "2026-13-01"},
    {"to": "2026-02-30"},
    {"from": "2026-03-01T10:00:00"},  # no offset: ambiguous
    {"to": "2026-03-01T10:00:00 01:00"},  # an unencoded '+' arrives as a space
    {"from": "2026-03-01T25:00:00Z"},
    {"mode": "robot"},
    {"group_by": "week"},
    {"format": "xml"},
    {"from": "x" * 65},
], ids=lambda p: next(iter(p)) + "=" + next(iter(p.values()))[:20])
def test_bad_parameters_are_a_422_problem(client: TestClient, keys: Keys, params: dict[str, str]) -> None:
    body = assert_problem(client.get(SCORES, params=params, headers=keys.qa.headers), 422)
    assert next(iter(params)) in body["detail"]


def test_the_audit_event_records_the_filters(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    get(client, keys.qa, **{"from": "2026-03-02", "mode": "hitl", "group_by": "day"})
    (event,) = [e for e in audit_events(sm) if e.action == "GET /v1/reports/scores"]
    assert event.outcome == "ok" and event.api_key_id == keys.qa.id
    assert event.detail is not None
    assert event.detail["filters"] == {"from": "2026-03-02T00:00:00Z", "to": None, "mode": "hitl", "tz": "UTC"}
    assert (event.detail["group_by"], event.detail["format"]) == ("day", "json")
