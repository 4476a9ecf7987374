"""GET /v1/jobs: filters, newest first, limit and cursor pagination, and refused parameters."""

from __future__ import annotations

import base64
import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import decode_image
from services.jobs import submit_job

from .conftest import Keys
from .helpers import assert_problem, file_part, png


def _submit(client: TestClient, keys: Keys, seed: int, **fields: str) -> str:
    r = client.post("/v1/jobs", files=file_part(png(seed)), data=fields, headers=keys.submitter.headers)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _ids(client: TestClient, keys: Keys, **params: str) -> list[str]:
    r = client.get("/v1/jobs", params=params, headers=keys.qa.headers)
    assert r.status_code == 200, r.text
    return [j["id"] for j in r.json()["items"]]


def _cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def test_empty_list(client: TestClient, keys: Keys) -> None:
    assert client.get("/v1/jobs", headers=keys.qa.headers).json() == {"items": [], "next_cursor": None}


def test_pagination_newest_first_without_duplicates(client: TestClient, keys: Keys) -> None:
    submitted = [_submit(client, keys, i) for i in range(7)]
    pages: list[list[str]] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 3} if cursor is None else {"limit": 3, "cursor": cursor}
        r = client.get("/v1/jobs", params=params, headers=keys.submitter.headers)
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append([j["id"] for j in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and cursor
        assert len(pages) < 5, "pagination does not end"
    assert [len(p) for p in pages] == [3, 3, 1]
    flat = [job for page in pages for job in page]
    assert flat == list(reversed(submitted))  # newest first, each job once

    # The items' timestamps agree with the order.
    items = client.get("/v1/jobs", params={"limit": 500}, headers=keys.qa.headers).json()["items"]
    created = [j["created_at"] for j in items]
    assert created == sorted(created, reverse=True)
    assert [j["id"] for j in items] == flat


def test_limit_equal_to_the_count_has_no_next_page(client: TestClient, keys: Keys) -> None:
    for i in range(3):
        _submit(client, keys, i)
    body = client.get("/v1/jobs", params={"limit": 3}, headers=keys.qa.headers).json()
    assert len(body["items"]) == 3 and body["next_cursor"] is None


def test_default_limit_is_50_and_the_maximum_500(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    decoded = decode_image(png())
    with sm.begin() as session:  # 51 jobs, stored directly (quicker than 51 uploads)
        for _ in range(51):
            submit_job(session, decoded=decoded, original_size=1, api_key_id=keys.submitter.id)
    first = client.get("/v1/jobs", headers=keys.qa.headers).json()
    assert len(first["items"]) == 50 and first["next_cursor"] is not None
    rest = client.get("/v1/jobs", params={"cursor": first["next_cursor"]}, headers=keys.qa.headers).json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    assert len({j["id"] for j in first["items"] + rest["items"]}) == 51
    assert len(client.get("/v1/jobs", params={"limit": 500}, headers=keys.qa.headers).json()["items"]) == 51
    assert_problem(client.get("/v1/jobs", params={"limit": 501}, headers=keys.qa.headers), 422, "invalid_request")


def test_filters(client: TestClient, keys: Keys) -> None:
    auto_a = _submit(client, keys, 1, external_id="ACC-1")
    hitl = _submit(client, keys, 2, mode="hitl", external_id="ACC-2")
    auto_b = _submit(client, keys, 3, external_id="ACC-1")
    canceled = _submit(client, keys, 4)
    assert client.post(f"/v1/jobs/{canceled}/cancel", headers=keys.submitter.headers).status_code == 200
    batch = client.post("/v1/batches", files=[("file", (f"{i}.png", png(10 + i), "image/png")) for i in range(2)],
                        headers=keys.submitter.headers).json()
    batch_jobs = [j["id"] for j in batch["jobs"]]

    assert set(_ids(client, keys)) == {auto_a, hitl, auto_b, canceled, *batch_jobs}
    assert _ids(client, keys, status="canceled") == [canceled]
    assert set(_ids(client, keys, status="queued")) == {auto_a, hitl, auto_b, *batch_jobs}
    assert _ids(client, keys, status="succeeded") == []
    assert _ids(client, keys, mode="hitl") == [hitl]
    assert set(_ids(client, keys, mode="autonomous")) == {auto_a, auto_b, canceled, *batch_jobs}
    assert _ids(client, keys, external_id="ACC-1") == [auto_b, auto_a]
    assert _ids(client, keys, external_id="ACC-3") == []
    assert _ids(client, keys, review_state="pending") == [hitl]
    assert hitl not in _ids(client, keys, review_state="not_required")
    assert _ids(client, keys, review_state="reviewed") == []
    assert set(_ids(client, keys, batch_id=batch["id"])) == set(batch_jobs)
    assert _ids(client, keys, mode="autonomous", external_id="ACC-1", status="queued") == [auto_b, auto_a]
    assert _ids(client, keys, mode="hitl", external_id="ACC-1") == []


def test_filtered_pagination_keeps_the_filter(client: TestClient, keys: Keys) -> None:
    hitl = [_submit(client, keys, i, mode="hitl") for i in range(3)]
    for i in range(3):
        _submit(client, keys, 10 + i)
    first = client.get("/v1/jobs", params={"mode": "hitl", "limit": 2}, headers=keys.qa.headers).json()
    second = client.get("/v1/jobs", params={"mode": "hitl", "limit": 2, "cursor": first["next_cursor"]},
                        headers=keys.qa.headers).json()
    assert [j["id"] for j in first["items"] + second["items"]] == list(reversed(hitl))
    assert second["next_cursor"] is None


BAD_PARAMETERS: list[dict[str, str | int]] = [
    {"limit": 0}, {"limit": 501}, {"limit": -1}, {"limit": "ten"}, {"status": "done"}, {"mode": "manual"},
    {"review_state": "maybe"}, {"external_id": "x" * 129}, {"cursor": "c" * 513},
]


def test_bad_parameters(client: TestClient, keys: Keys, subtests: pytest.Subtests) -> None:
    for params in BAD_PARAMETERS:
        with subtests.test(str(params)[:40]):
            body = assert_problem(client.get("/v1/jobs", params=params, headers=keys.qa.headers), 422,
                                  "invalid_request")
            assert next(iter(params)) in body["detail"]


GARBAGE_CURSORS: dict[str, str] = {
    "word": "garbage", "punctuation": "!!!!", "empty-object": "e30",
    "naive-time": _cursor({"t": "2024-01-01T00:00:00", "id": "x"}),
    "id-not-a-string": _cursor({"t": "2024-01-01T00:00:00+00:00", "id": 7}),
    "time-not-a-time": _cursor({"t": "yesterday", "id": "x"}),
    "time-a-number": _cursor({"t": 5, "id": "x"}),
    "list": _cursor(["t", "id"]), "null": _cursor(None), "string": _cursor("text"),
    "not-utf8": base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
    # valid JSON whose id is a lone surrogate: cannot be encoded for the database
    "surrogate-id": base64.urlsafe_b64encode(b'{"t":"2026-01-01T00:00:00Z","id":"\\ud800"}').decode(),
    "nul-id": _cursor({"t": "2024-01-01T00:00:00+00:00", "id": "a\x00b"}),
}


def test_garbage_cursor_is_a_422_problem(client: TestClient, keys: Keys, subtests: pytest.Subtests) -> None:
    _submit(client, keys, 0)
    for name, cursor in GARBAGE_CURSORS.items():
        with subtests.test(name):
            assert_problem(client.get("/v1/jobs", params={"cursor": cursor}, headers=keys.qa.headers), 422,
                           "invalid_cursor")


def test_any_cursor_text_is_200_or_422(client: TestClient, keys: Keys) -> None:
    _submit(client, keys, 0)

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.text(max_size=120))
    def check(cursor: str) -> None:
        r = client.get("/v1/jobs", params={"cursor": cursor}, headers=keys.qa.headers)
        assert r.status_code in (200, 422), (cursor, r.status_code, r.text)
        if r.status_code == 422:
            assert_problem(r, 422)

    check()




@pytest.mark.parametrize("time", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_cursor_with_an_unrepresentable_time_is_a_422(client: TestClient, keys: Keys, time: str) -> None:
    cursor = _cursor({"t": time, "id": "x"})
    assert_problem(client.get("/v1/jobs", params={"cursor": cursor}, headers=keys.qa.headers), 422, "invalid_cursor")




@pytest.mark.parametrize(
    "params",
    [{"external_id": "a\x00b"}, {"batch_id": "a\x00b"},
     {"cursor": _cursor({"t": "2024-01-01T00:00:00+00:00", "id": "a\x00b"})}],
    ids=["external-id", "batch-id", "cursor-id"],
)
def test_nul_in_a_filter_is_refused(request: pytest.FixtureRequest, db_url: str, client: TestClient,
                                    keys: Keys, params: dict[str, str]) -> None:
    """No id or reference holds U+0000: a filter with one is a 422 (not a 500, nor an empty page
    that reads as "no such jobs")."""
    r = client.get("/v1/jobs", params=params, headers=keys.qa.headers)
    assert r.status_code == 422, r.text
