"""The audit trail: every /v1 request writes exactly one ``audit_events`` row, naming the key,
the action (method and route template), the job, the outcome and the request id."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import ApiKey, AuditEvent

from .conftest import ClientFactory, Keys
from .helpers import HTTPResponse, assert_problem, audit_events, file_part, png

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def _only_event(sm: sessionmaker[Session], response: HTTPResponse) -> AuditEvent:
    """The one event of this response (found by its X-Request-ID)."""
    request_id = response.headers["x-request-id"]
    events = [e for e in audit_events(sm) if e.request_id == request_id]
    assert len(events) == 1, [(e.action, e.request_id) for e in audit_events(sm)]
    return events[0]


def test_submit_read_cancel_are_audited_with_their_job(client: TestClient, keys: Keys,
                                                       sm: sessionmaker[Session]) -> None:
    submitted = client.post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers)
    job_id = submitted.json()["id"]
    read = client.get(f"/v1/jobs/{job_id}", headers=keys.submitter.headers)
    canceled = client.post(f"/v1/jobs/{job_id}/cancel", headers=keys.submitter.headers)
    result = client.get(f"/v1/jobs/{job_id}/result", headers=keys.reviewer.headers)

    expected = [
        (submitted, "POST /v1/jobs", keys.submitter.id, "ok", 202),
        (read, "GET /v1/jobs/{job_id}", keys.submitter.id, "ok", 200),
        (canceled, "POST /v1/jobs/{job_id}/cancel", keys.submitter.id, "ok", 200),
        (result, "GET /v1/jobs/{job_id}/result", keys.reviewer.id, "rejected", 409),
    ]
    for response, action, key_id, outcome, status in expected:
        assert response.status_code == status
        event = _only_event(sm, response)
        assert (event.action, event.api_key_id, event.job_id, event.outcome) == (action, key_id, job_id, outcome)
        assert event.detail is not None and event.detail["status"] == status
        assert event.at is not None
    assert len(audit_events(sm)) == len(expected)


def test_the_callers_request_id_is_kept(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    r = client.get("/v1/jobs", headers={**keys.qa.headers, "X-Request-ID": "pacs-trace-42"})
    assert r.headers["x-request-id"] == "pacs-trace-42"
    event = _only_event(sm, r)
    assert (event.action, event.outcome, event.api_key_id, event.job_id) == ("GET /v1/jobs", "ok", keys.qa.id, None)


def test_generated_request_ids_are_unique(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    ids = {client.get("/v1/jobs", headers=keys.qa.headers).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
    assert {e.request_id for e in audit_events(sm)} == ids


def test_unauthenticated_request_is_audited_as_denied_without_a_key(client: TestClient,
                                                                    sm: sessionmaker[Session]) -> None:
    r = client.get("/v1/jobs", headers={"Authorization": "Bearer fada_guessing-0123456789"})
    assert r.status_code == 401
    event = _only_event(sm, r)
    assert (event.api_key_id, event.outcome, event.action, event.job_id) == (None, "denied", "GET /v1/jobs", None)
    # Only a short prefix of a presented secret is kept, never the whole of it.
    assert "fada_guessing-0123456789" not in str(event.detail)

    r = client.post("/v1/jobs", files=file_part(png()))
    event = _only_event(sm, r)
    assert (event.api_key_id, event.outcome, event.action) == (None, "denied", "POST /v1/jobs")


def test_refused_request_is_audited_under_its_route_with_the_path_tried(client: TestClient, keys: Keys,
                                                                        sm: sessionmaker[Session]) -> None:
    """The action names the route's template, as for an answered request; the raw path says
    which job someone tried without a valid key."""
    job = client.post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers).json()["id"]
    r = client.get(f"/v1/jobs/{job}/result", headers={"Authorization": "Bearer fada_guessing-0123456789"})
    assert r.status_code == 401
    event = _only_event(sm, r)
    assert (event.api_key_id, event.outcome, event.action) == (None, "denied", "GET /v1/jobs/{job_id}/result")
    assert event.detail is not None
    assert (event.detail["route"], event.detail["path"]) == ("/v1/jobs/{job_id}/result", f"/v1/jobs/{job}/result")


def test_wrong_role_is_audited_as_denied_with_the_key(client: TestClient, keys: Keys,
                                                      sm: sessionmaker[Session]) -> None:
    r = client.post("/v1/jobs", files=file_part(png()), headers=keys.reviewer.headers)
    assert r.status_code == 403
    event = _only_event(sm, r)
    assert (event.api_key_id, event.outcome, event.action, event.job_id) == (
        keys.reviewer.id, "denied", "POST /v1/jobs", None)


def test_refused_upload_is_audited_as_rejected(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    r = client.post("/v1/jobs", files=file_part(b"plain text"), headers=keys.submitter.headers)
    assert r.status_code == 415
    event = _only_event(sm, r)
    assert (event.api_key_id, event.outcome, event.action, event.job_id) == (
        keys.submitter.id, "rejected", "POST /v1/jobs", None)
    assert event.detail is not None and event.detail["status"] == 415


def test_body_too_large_is_audited_as_rejected(make_client: ClientFactory, keys: Keys,
                                               sm: sessionmaker[Session]) -> None:
    client = make_client(max_body_bytes=4096)
    r = client.post("/v1/jobs", files=file_part(png(width=100, height=100)), headers=keys.submitter.headers)
    assert r.status_code == 413
    event = _only_event(sm, r)
    assert (event.api_key_id, event.outcome, event.action) == (keys.submitter.id, "rejected", "POST /v1/jobs")


def test_unknown_job_is_audited_with_the_requested_id(client: TestClient, keys: Keys,
                                                      sm: sessionmaker[Session]) -> None:
    r = client.get(f"/v1/jobs/{UNKNOWN_ID}", headers=keys.admin.headers)
    assert r.status_code == 404
    event = _only_event(sm, r)
    assert (event.outcome, event.job_id, event.action) == ("rejected", UNKNOWN_ID, "GET /v1/jobs/{job_id}")


def test_idempotent_replay_is_audited_as_a_replay(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    headers = {**keys.submitter.headers, "Idempotency-Key": "again"}
    first = client.post("/v1/jobs", files=file_part(png()), headers=headers)
    second = client.post("/v1/jobs", files=file_part(png()), headers=headers)
    assert (first.status_code, second.status_code) == (202, 200)
    a, b = _only_event(sm, first), _only_event(sm, second)
    assert a.job_id == b.job_id == first.json()["id"]
    assert a.detail is not None and b.detail is not None
    assert (a.detail["replay"], b.detail["replay"]) == (False, True)


def test_batch_submission_is_audited_without_a_job_id(client: TestClient, keys: Keys,
                                                      sm: sessionmaker[Session]) -> None:
    files = [("file", (f"{i}.png", png(i), "image/png")) for i in range(2)]
    r = client.post("/v1/batches", files=files, headers=keys.submitter.headers)
    assert r.status_code == 202
    event = _only_event(sm, r)
    assert (event.action, event.outcome, event.job_id) == ("POST /v1/batches", "ok", None)
    assert event.detail is not None
    assert (event.detail["batch_id"], event.detail["jobs"]) == (r.json()["id"], 2)


def test_operations_routes_are_not_audited(client: TestClient, sm: sessionmaker[Session]) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        r = client.get(path)
        assert "x-request-id" in r.headers
    assert audit_events(sm) == []


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("database exploded: postgresql://fada:hunter2@db/fada")


def test_unexpected_error_is_a_bare_500_problem(client: TestClient, keys: Keys,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("api.routes.jobs.list_jobs", _boom)
    r = client.get("/v1/jobs", headers=keys.qa.headers)
    body = assert_problem(r, 500, "internal_error")
    assert "hunter2" not in r.text and "RuntimeError" not in r.text  # no internals, no stack trace
    assert body["detail"]




def test_unexpected_error_is_audited_with_its_request_id(client: TestClient, keys: Keys, sm: sessionmaker[Session],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("api.routes.jobs.list_jobs", _boom)
    r = client.get("/v1/jobs", headers={**keys.qa.headers, "X-Request-ID": "trace-500"})
    assert r.status_code == 500
    events = audit_events(sm)
    assert [(e.action, e.outcome, e.api_key_id, e.request_id) for e in events] == [
        ("GET /v1/jobs", "error", keys.qa.id, "trace-500")]
    assert r.headers.get("x-request-id") == "trace-500"




def test_request_for_an_overlong_job_id_is_audited(request: pytest.FixtureRequest, db_url: str, client: TestClient,
                                                   keys: Keys, sm: sessionmaker[Session]) -> None:
    r = client.get(f"/v1/jobs/{'x' * 40}", headers=keys.qa.headers)
    assert_problem(r, 404, "job_not_found")
    event = _only_event(sm, r)
    assert (event.action, event.outcome) == ("GET /v1/jobs/{job_id}", "rejected")


# --- reading the trail back: GET /v1/audit (admin) -----------------------------------------------


def _audit(client: TestClient, keys: Keys, **params: str | int) -> dict[str, Any]:
    r = client.get("/v1/audit", params=params, headers=keys.admin.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_privacy_officer_finds_who_opened_a_result(client: TestClient, keys: Keys) -> None:
    """"Who opened this job's result?": every request naming the job, newest first, with the
    key's name, prefix and role, the outcome and the request id the caller was answered with;
    the other job's requests are not in it."""
    job_id = client.post("/v1/jobs", files=file_part(png(1)), headers=keys.submitter.headers).json()["id"]
    other = client.post("/v1/jobs", files=file_part(png(2)), headers=keys.submitter.headers).json()["id"]
    client.get(f"/v1/jobs/{other}", headers=keys.submitter.headers)
    opened = client.get(f"/v1/jobs/{job_id}/result", headers=keys.reviewer.headers)
    client.get(f"/v1/jobs/{job_id}", headers=keys.other_submitter.headers)  # not theirs: 404, still recorded

    page = _audit(client, keys, job_id=job_id)
    seen = [(e["action"], e["api_key"]["name"], e["outcome"]) for e in page["items"]]
    assert seen == [("GET /v1/jobs/{job_id}", "other_submitter", "rejected"),
                    ("GET /v1/jobs/{job_id}/result", "reviewer", "rejected"),
                    ("POST /v1/jobs", "submitter", "ok")]
    reviewer_event = page["items"][1]
    assert reviewer_event["request_id"] == opened.headers["x-request-id"]
    assert reviewer_event["api_key"] == {"id": keys.reviewer.id, "prefix": reviewer_event["api_key"]["prefix"],
                                         "name": "reviewer", "role": "reviewer"}
    assert keys.reviewer.secret.startswith(reviewer_event["api_key"]["prefix"])
    assert reviewer_event["detail"]["status"] == 409 and reviewer_event["job_id"] == job_id
    assert page["next_cursor"] is None


def test_the_trail_filters_by_key_action_outcome_and_time_and_pages(client: TestClient, keys: Keys,
                                                                    sm: sessionmaker[Session]) -> None:
    ids = [client.post("/v1/jobs", files=file_part(png(i)), headers=keys.submitter.headers).json()["id"]
           for i in range(5)]
    client.get("/v1/jobs", headers={"Authorization": "Bearer fada_not-a-key"})  # no key: api_key null
    by_prefix = _audit(client, keys, key=keys.submitter.secret[:len(_prefix(sm, keys.submitter.id))])
    by_id = _audit(client, keys, key=keys.submitter.id)
    assert by_prefix == by_id and [e["job_id"] for e in by_id["items"]] == ids[::-1]
    denied = _audit(client, keys, outcome="denied")["items"]
    assert [(e["action"], e["api_key"]) for e in denied] == [("GET /v1/jobs", None)]
    assert len(_audit(client, keys, action="POST /v1/jobs")["items"]) == 5

    # Pages of 2 hold every submission once, newest first.
    pages, cursor = [], None
    while True:
        page = _audit(client, keys, action="POST /v1/jobs", limit=2, **({"cursor": cursor} if cursor else {}))
        pages.append([e["job_id"] for e in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[:1]]

    # A window: a date is a whole day (in tz), a datetime needs an offset.
    [first] = [e for e in by_id["items"] if e["job_id"] == ids[0]]
    at = datetime.fromisoformat(first["at"])
    assert len(_audit(client, keys, key=keys.submitter.id, to=at.isoformat())["items"]) == 0  # exclusive
    after = _audit(client, keys, key=keys.submitter.id, **{"from": (at + timedelta(microseconds=1)).isoformat()})
    assert ids[0] not in [e["job_id"] for e in after["items"]] and len(after["items"]) == 4
    today = at.date().isoformat()
    assert len(_audit(client, keys, key=keys.submitter.id, **{"from": today, "to": today})["items"]) == 5


def test_only_an_admin_reads_the_trail_and_bad_filters_are_clear(client: TestClient, keys: Keys,
                                                                 sm: sessionmaker[Session]) -> None:
    for who in (keys.submitter, keys.reviewer, keys.qa):
        assert_problem(client.get("/v1/audit", headers=who.headers), 403, "forbidden")
    assert_problem(client.get("/v1/audit", params={"key": "fada_nope"}, headers=keys.admin.headers), 404,
                   "key_not_found")
    bad_time = assert_problem(client.get("/v1/audit", params={"from": "2026-03-01T08:00"},
                                         headers=keys.admin.headers), 422, "invalid_request")
    assert "no time zone" in bad_time["detail"] and bad_time["errors"][0]["loc"] == ["query", "from"]
    assert_problem(client.get("/v1/audit", params={"outcome": "maybe"}, headers=keys.admin.headers), 422,
                   "invalid_request")
    assert_problem(client.get("/v1/audit", params={"cursor": "garbage"}, headers=keys.admin.headers), 422,
                   "invalid_cursor")
    # Reading the trail is in the trail, refusals included (this read's own event is written
    # once it is answered).
    reads = _audit(client, keys, action="GET /v1/audit")["items"]
    assert [e["outcome"] for e in reads] == ["rejected"] * 4 + ["denied"] * 3


def _prefix(sm: sessionmaker[Session], key_id: str) -> str:
    with sm() as session:
        key = session.get(ApiKey, key_id)
        assert key is not None
        return key.key_prefix
