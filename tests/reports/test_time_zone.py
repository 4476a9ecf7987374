"""Score reports read dates and days in a time zone (``tz``, default ``FADA_REPORT_TIMEZONE``):
a ward in Paris that asks for "2 March" gets the reviews of its own 2 March, days of a clock
change last 23 or 25 hours, and ``group_by=day`` counts local days."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.reports.filters import ReportParameterError, parse_filters
from shared.settings import Settings
from tests.api.conftest import Keys
from tests.api.helpers import assert_problem

from .helpers import INTERPRETATION, Seeder

SCORES = "/v1/reports/scores"


def window(raw_from: str | None, raw_to: str | None, tz: str) -> tuple[str | None, str | None]:
    f = parse_filters(raw_from, raw_to, None, tz).as_json()
    return f["from"], f["to"]


@pytest.mark.parametrize(("raw", "tz", "expected"), [
    (("2026-03-02", "2026-03-02"), "UTC", ("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z")),
    (("2026-03-02", "2026-03-02"), "Europe/Paris", ("2026-03-01T23:00:00Z", "2026-03-02T23:00:00Z")),
    # Paris moves its clocks forward on 29 March 2026: that day has 23 hours, the next starts at 22:00Z.
    (("2026-03-29", "2026-03-29"), "Europe/Paris", ("2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z")),
    (("2026-03-01", "2026-03-31"), "Europe/Paris", ("2026-02-28T23:00:00Z", "2026-03-31T22:00:00Z")),
    # New York moves them back on 1 November 2026: 25 hours.
    (("2026-11-01", "2026-11-01"), "America/New_York", ("2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z")),
    # Santiago's spring change is at midnight: 6 September starts at 01:00 local, 04:00Z.
    (("2026-09-06", None), "America/Santiago", ("2026-09-06T04:00:00Z", None)),
    # Samoa skipped 30 December 2011 altogether: that day is an empty window.
    (("2011-12-30", "2011-12-30"), "Pacific/Apia", ("2011-12-30T10:00:00Z", "2011-12-30T10:00:00Z")),
    # A datetime with an offset is an instant: the zone does not move it.
    (("2026-03-02T08:00:00+01:00", None), "America/New_York", ("2026-03-02T07:00:00Z", None)),
    # The open ends of the calendar stay open, whatever the zone's offset.
    (("0001-01-01", "9999-12-31"), "Asia/Tokyo", ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z")),
    (("0001-01-01", "9999-12-30"), "America/Los_Angeles", ("0001-01-01T07:52:58Z", "9999-12-31T08:00:00Z")),
], ids=["utc", "paris", "paris-23h", "paris-month", "new-york-25h", "santiago-midnight-gap", "apia-skipped-day",
        "datetime", "tokyo-ends", "los-angeles-ends"])
def test_a_date_is_that_whole_day_in_the_zone(raw: tuple[str | None, str | None], tz: str,
                                             expected: tuple[str | None, str | None]) -> None:
    assert window(*raw, tz) == expected


@pytest.mark.parametrize("tz", ["Mars/Olympus", "europe/paris", "../../etc/passwd", "/etc/localtime", "+01:00",
                                "Europe/", "Europe/Paris\x00", " "])
def test_a_name_that_is_no_zone_is_refused(tz: str) -> None:
    if not tz.strip():  # blank is "no tz given": the default, not an error
        assert parse_filters(None, None, None, tz, default_tz="Asia/Tokyo").zone.key == "Asia/Tokyo"
        return
    with pytest.raises(ReportParameterError) as refused:
        parse_filters("2026-03-02", None, None, tz)
    assert refused.value.param == "tz" and "IANA time zone" in refused.value.message


def test_a_mistyped_default_zone_stops_the_service_at_start() -> None:
    with pytest.raises(ValidationError, match="report_timezone"):
        Settings(report_timezone="Europe/Pariss")
    assert Settings(report_timezone="Europe/Paris").report_timezone == "Europe/Paris"


# --- through the HTTP API ----------------------------------------------------------------------

# Around midnight in Paris (UTC+1 in March) and in UTC.
TIMES = ["2026-03-01T22:59:59Z", "2026-03-01T23:00:00Z", "2026-03-02T12:00:00Z", "2026-03-02T22:59:59Z",
         "2026-03-02T23:00:00Z"]


def seed(seeder: Seeder) -> None:
    jobs = seeder.jobs(len(TIMES))
    for job, at in zip(jobs, TIMES, strict=True):
        seeder.reviews([job], INTERPRETATION, [1], at=datetime.fromisoformat(at))


def get(client: TestClient, key: Any, **params: str) -> dict[str, Any]:
    response = client.get(SCORES, params=params, headers=key.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def days(body: dict[str, Any]) -> dict[str, int]:
    return {g["key"]: g["cases"] for g in body["groups"]}


def test_the_window_and_the_days_follow_tz(client: TestClient, keys: Keys, seeder: Seeder) -> None:
    seed(seeder)
    utc = get(client, keys.qa, **{"from": "2026-03-02", "to": "2026-03-02"})
    assert utc["filters"] == {"from": "2026-03-02T00:00:00Z", "to": "2026-03-03T00:00:00Z", "mode": None,
                              "tz": "UTC"}
    assert utc["total"]["cases"] == 3  # 12:00Z, 22:59:59Z, 23:00Z
    paris = get(client, keys.qa, **{"from": "2026-03-02", "to": "2026-03-02", "tz": "Europe/Paris"})
    assert paris["filters"] == {"from": "2026-03-01T23:00:00Z", "to": "2026-03-02T23:00:00Z", "mode": None,
                                "tz": "Europe/Paris"}
    assert paris["total"]["cases"] == 3  # 23:00Z on the 1st, 12:00Z, 22:59:59Z

    assert days(get(client, keys.qa, group_by="day")) == {"2026-03-01": 2, "2026-03-02": 3}
    assert days(get(client, keys.qa, group_by="day", tz="Europe/Paris")) == \
        {"2026-03-01": 1, "2026-03-02": 3, "2026-03-03": 1}
    assert days(get(client, keys.qa, group_by="day", tz="Asia/Tokyo")) == {"2026-03-02": 3, "2026-03-03": 2}


def test_the_services_zone_applies_when_the_request_names_none(make_client: Any, keys: Keys,
                                                               seeder: Seeder) -> None:
    seed(seeder)
    client = make_client(report_timezone="Europe/Paris")
    body = get(client, keys.qa, group_by="day", **{"from": "2026-03-02"})
    assert body["filters"]["tz"] == "Europe/Paris" and body["filters"]["from"] == "2026-03-01T23:00:00Z"
    assert days(body) == {"2026-03-02": 3, "2026-03-03": 1}
    assert get(client, keys.qa, tz="UTC", **{"from": "2026-03-02"})["filters"]["from"] == "2026-03-02T00:00:00Z"


@pytest.mark.parametrize("tz", ["Mars/Olympus", "../etc/passwd", "x" * 65])
def test_an_unknown_zone_is_a_422_problem(client: TestClient, keys: Keys, tz: str) -> None:
    body = assert_problem(client.get(SCORES, params={"tz": tz}, headers=keys.qa.headers), 422)
    assert "tz" in body["detail"]


def test_the_page_and_its_csv_link_carry_the_zone(client: TestClient, keys: Keys, seeder: Seeder) -> None:
    seed(seeder)
    response = client.get(f"{SCORES}.html", params={"from": "2026-03-02", "tz": "Europe/Paris", "group_by": "day"},
                          headers=keys.qa.headers)
    assert response.status_code == 200, response.text
    page = response.text
    assert "reviews created from 2026-03-02 00:00 Europe/Paris (UTC+01:00) on" in page
    assert "By day (Europe/Paris)" in page and "Mean score per day (Europe/Paris)" in page
    assert '<input name="tz" value="Europe/Paris"' in page
    assert "tz=Europe%2FParis" in page  # the CSV link asks for the same report
    assert "All times and days in Europe/Paris." in page
    # The window's open end (year 9999) cannot be shown in Tokyo's time: it is shown in UTC.
    tokyo = client.get(f"{SCORES}.html", params={"to": "9999-12-31", "tz": "Asia/Tokyo"}, headers=keys.qa.headers)
    assert tokyo.status_code == 200 and "before 9999-12-31 23:59:59.999999" not in tokyo.text
    assert "reviews created before 9999-12-31 23:59:59 UTC" in tokyo.text


def test_the_day_keys_are_local_dates(client: TestClient, keys: Keys, seeder: Seeder) -> None:
    """Kiritimati is UTC+14: 12:00Z on 2 March is already 3 March there."""
    seeder.reviews(seeder.jobs(1), INTERPRETATION, [2], at=datetime(2026, 3, 2, 12, tzinfo=UTC))
    assert days(get(client, keys.qa, group_by="day", tz="Pacific/Kiritimati")) == {"2026-03-03": 1}
