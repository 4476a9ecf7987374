"""The review routes over HTTP (PostgreSQL and SQLite): resources, roles, problems, the HITL
gate (the resumed job is enqueued), amendments with history, the audit trail and the queue."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import JobMode
from tests.api.helpers import CONTRACT_JOB_FIELDS, assert_problem, audit_events, enqueued_job_ids

from .conftest import Key, Keys
from .helpers import Jobs, full_document

REVIEW_FIELDS = {"id", "job_id", "reviewer", "dimension", "score", "decision", "comment", "corrections",
                 "next_phases", "group", "job_mode", "model_revision", "revision", "created_at", "amended_at",
                 "history"}
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


def _body(dimension: str = "interpretation", **fields: Any) -> dict[str, Any]:
    return {"dimension": dimension, "score": 1, "decision": "accept", **fields}


def _post(client: TestClient, key: Key, job_id: str, **fields: Any) -> Any:
    return client.post(f"/v1/jobs/{job_id}/reviews", json=_body(**fields), headers=key.headers)


def test_a_review_is_created_with_its_resource_and_location(client: TestClient, keys: Keys, jobs: Jobs) -> None:
    job_id = jobs.autonomous_succeeded()
    r = _post(client, keys.reviewer, job_id, score=2, decision="correct", comment="plane slightly oblique",
              corrections={"label": "FL_PLANE"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == REVIEW_FIELDS
    assert body["job_id"] == job_id and body["reviewer"] == {"key_id": keys.reviewer.id, "name": "reviewer"}
    assert (body["dimension"], body["score"], body["decision"], body["comment"]) == (
        "interpretation", 2, "correct", "plane slightly oblique")
    assert body["corrections"] == {"label": "FL_PLANE", "interpretation": None, "annotations": None}
    assert (body["next_phases"], body["group"], body["job_mode"], body["model_revision"]) == (
        None, None, "autonomous", "rev-auto-3")
    assert (body["revision"], body["amended_at"], body["history"]) == (1, None, [])
    assert datetime.fromisoformat(body["created_at"]).utcoffset() is not None
    assert r.headers["location"] == f"/v1/jobs/{job_id}/reviews/interpretation"
    own = client.get(r.headers["location"], headers=keys.reviewer.headers)
    assert own.status_code == 200 and own.json() == body
    # the admin key may review too, under its own name (and 2.0 is an integer in JSON Schema)
    r = _post(client, keys.admin, job_id, dimension="annotation", score=2.0)
    assert r.status_code == 201 and r.json()["reviewer"] == {"key_id": keys.admin.id, "name": "admin"}
    assert r.json()["score"] == 2
    assert client.get(f"/v1/jobs/{job_id}", headers=keys.qa.headers).json()["review_state"] == "reviewed"


def test_the_gate_review_resumes_the_job_and_enqueues_it(client: TestClient, keys: Keys, jobs: Jobs,
                                                         broker_url: str) -> None:
    job_id = jobs.awaiting()
    r = _post(client, keys.reviewer, job_id, next_phases=["detect", "segment"], group="brain")
    assert r.status_code == 201, r.text
    assert (r.json()["next_phases"], r.json()["group"], r.json()["job_mode"]) == (["detect", "segment"], "brain",
                                                                                   "hitl")
    job = client.get(f"/v1/jobs/{job_id}", headers=keys.reviewer.headers).json()
    assert (job["status"], job["review_state"]) == ("queued", "pending")
    assert job_id in enqueued_job_ids(broker_url)
    # a second reviewer comes too late to choose
    again = client.post(f"/v1/jobs/{job_id}/reviews", json=_body(next_phases=["detect"]), headers=keys.admin.headers)
    assert_problem(again, 409, "not_reviewable")


def test_a_rejected_job_is_finished_without_later_phases(client: TestClient, keys: Keys, jobs: Jobs,
                                                         broker_url: str) -> None:
    job_id = jobs.awaiting()
    r = _post(client, keys.reviewer, job_id, score=3, decision="reject", comment="not a fetal image")
    assert r.status_code == 201, r.text
    job = client.get(f"/v1/jobs/{job_id}", headers=keys.reviewer.headers).json()
    assert (job["status"], job["review_state"]) == ("succeeded", "reviewed")
    result = client.get(f"/v1/jobs/{job_id}/result", headers=keys.reviewer.headers).json()
    assert result["status"] == "succeeded" and result["interpretation"] is not None
    for phase in ("map", "detect", "keypoints", "segment"):
        assert result["phases"][phase] == {**result["phases"][phase], "status": "skipped",
                                           "detail": "rejected by the reviewer"}
    assert result["detections"] == [] and result["segmentations"] == []
    assert job_id not in enqueued_job_ids(broker_url)
    assert client.get("/v1/reviews/queue", headers=keys.reviewer.headers).json()["items"] == []


@pytest.mark.parametrize("role", ["submitter", "qa"])
def test_only_reviewers_write_reviews(client: TestClient, keys: Keys, jobs: Jobs, role: str) -> None:
    job_id = jobs.autonomous_succeeded()
    key: Key = getattr(keys, role)
    assert_problem(_post(client, key, job_id), 403, "forbidden")
    assert _post(client, keys.reviewer, job_id).status_code == 201
    put = client.put(f"/v1/jobs/{job_id}/reviews/interpretation", json={"score": 2, "decision": "accept"},
                     headers=key.headers)
    assert_problem(put, 403, "forbidden")
    assert_problem(client.get("/v1/reviews/queue", headers=key.headers), 403, "forbidden")
    listed = client.get(f"/v1/jobs/{job_id}/reviews", headers=key.headers)
    if role == "qa":
        assert listed.status_code == 200 and [i["score"] for i in listed.json()["items"]] == [1]
    else:
        assert_problem(listed, 403, "forbidden")
    assert client.post(f"/v1/jobs/{job_id}/reviews", json=_body()).status_code == 401


def test_state_conflicts_are_409_problems(client: TestClient, keys: Keys, jobs: Jobs) -> None:
    queued, awaiting, done = jobs.queued(), jobs.awaiting(), jobs.autonomous_succeeded()
    body = assert_problem(_post(client, keys.reviewer, queued), 409, "not_reviewable")
    assert body["current_status"] == "queued" and "once it has a result" in body["detail"]
    body = assert_problem(_post(client, keys.reviewer, awaiting, dimension="annotation"), 409, "annotations_not_ready")
    assert body["current_status"] == "awaiting_review"
    assert _post(client, keys.reviewer, done).status_code == 201
    body = assert_problem(_post(client, keys.reviewer, done, score=3), 409, "review_exists")
    assert f"PUT /v1/jobs/{done}/reviews/interpretation" in body["detail"]
    assert_problem(_post(client, keys.reviewer, UNKNOWN_ID), 404, "job_not_found")


@pytest.mark.parametrize(("fields", "code", "detail"), [
    ({"score": 4}, "invalid_request", "score"),
    ({"score": True}, "invalid_request", "score"),
    ({"score": "2"}, "invalid_request", "score"),
    ({"decision": "maybe"}, "invalid_request", "decision"),
    ({"dimension": "overall"}, "invalid_request", "dimension"),
    ({"next_phase": ["detect"]}, "invalid_request", "next_phase"),
    ({"next_phases": ["map"]}, "invalid_request", "next_phases.0"),
    ({"corrections": {"annotations": [{"label": "Brain", "bbox": [1, 2, 3]}]}}, "invalid_request",
     "corrections.annotations.0.bbox"),
    ({"dimension": "annotation", "corrections": {"annotations": [{"label": "Brain", "bbox": [40, 0, 10, 5]}]}},
     "invalid_review", "corrections.annotations[0].bbox [40.0, 0.0, 10.0, 5.0] is not inside the 48x32 image"),
    ({"corrections": {"label": "NOT_A_VIEW"}}, "invalid_review", "'NOT_A_VIEW' is not a view label"),
    ({"next_phases": ["detect"]}, "invalid_review", "next_phases and group apply to HITL jobs only"),
    # PostgreSQL cannot store U+0000 in text or JSONB: refused, never a 500
    ({"comment": "a\u0000b"}, "invalid_request", "comment"),
    ({"corrections": {"interpretation": {"imaging_plane": "x\u0000"}}}, "invalid_request",
     "corrections.interpretation.imaging_plane"),
    ({"corrections": {"interpretation": {"\u0000": "x"}}}, "invalid_review", "unknown fields"),
])
def test_bad_reviews_are_422_problems_that_say_what_is_wrong(client: TestClient, keys: Keys, jobs: Jobs,
                                                             fields: dict[str, Any], code: str, detail: str) -> None:
    job_id = jobs.autonomous_succeeded()
    body = assert_problem(client.post(f"/v1/jobs/{job_id}/reviews", json=_body(**fields),
                                      headers=keys.reviewer.headers), 422, code)
    assert detail in body["detail"]
    assert client.get(f"/v1/jobs/{job_id}/reviews", headers=keys.qa.headers).json()["items"] == []


@pytest.mark.parametrize(("fields", "detail"), [
    ({}, "must give next_phases"),
    ({"next_phases": ["detect"], "group": "unicorn"}, "group 'unicorn' is not a routing group"),
    ({"decision": "reject", "next_phases": ["detect"]}, "decision reject finishes the job without later phases"),
])
def test_a_gate_review_must_choose_well(client: TestClient, keys: Keys, jobs: Jobs, fields: dict[str, Any],
                                        detail: str) -> None:
    job_id = jobs.awaiting()
    body = assert_problem(_post(client, keys.reviewer, job_id, **fields), 422, "invalid_review")
    assert detail in body["detail"]
    assert client.get(f"/v1/jobs/{job_id}", headers=keys.qa.headers).json()["status"] == "awaiting_review"


def test_put_amends_and_the_list_shows_the_history(client: TestClient, keys: Keys, jobs: Jobs,
                                                   second_reviewer: Key) -> None:
    job_id = jobs.autonomous_succeeded()
    created = _post(client, keys.reviewer, job_id, dimension="annotation", score=3, decision="reject").json()
    _post(client, second_reviewer, job_id, dimension="annotation", score=1)
    url = f"/v1/jobs/{job_id}/reviews/annotation"
    fix = {"annotations": [{"label": "Brain", "bbox": [1, 1, 30, 20],
                            "segmentation": [[1, 1, 31, 1, 31, 21, 1, 21]]}]}
    r = client.put(url, json={"score": 2, "decision": "correct", "corrections": fix}, headers=keys.reviewer.headers)
    assert r.status_code == 200, r.text
    amended = r.json()
    assert (amended["id"], amended["revision"], amended["score"], amended["created_at"]) == (
        created["id"], 2, 2, created["created_at"])
    assert amended["amended_at"] is not None and amended["corrections"]["annotations"][0]["label"] == "Brain"
    assert [(v["revision"], v["score"], v["decision"]) for v in amended["history"]] == [(1, 3, "reject")]
    listed = client.get(f"/v1/jobs/{job_id}/reviews", headers=keys.reviewer.headers).json()
    assert listed["next_cursor"] is None
    assert [(i["reviewer"]["name"], i["revision"], len(i["history"])) for i in listed["items"]] == [
        ("reviewer", 2, 1), ("second reviewer", 1, 0)]
    assert listed["items"][0]["history"][0]["created_at"] == created["created_at"]
    # only one's own review; the dimension must exist; the content is checked as on POST
    assert_problem(client.put(f"/v1/jobs/{job_id}/reviews/interpretation", json={"score": 1, "decision": "accept"},
                              headers=keys.reviewer.headers), 404, "review_not_found")
    assert_problem(client.put(f"/v1/jobs/{job_id}/reviews/overall", json={"score": 1, "decision": "accept"},
                              headers=keys.reviewer.headers), 422, "invalid_request")
    assert_problem(client.put(url, json={"score": 1, "decision": "accept", "dimension": "annotation"},
                              headers=keys.reviewer.headers), 422, "invalid_request")
    assert_problem(client.put(url, json={"score": 1, "decision": "accept", "next_phases": ["detect"]},
                              headers=keys.reviewer.headers), 422, "invalid_review")
    assert_problem(client.get(f"/v1/jobs/{UNKNOWN_ID}/reviews", headers=keys.qa.headers), 404, "job_not_found")


def test_reviews_and_amendments_are_audited(client: TestClient, keys: Keys, jobs: Jobs,
                                            sm: sessionmaker[Session]) -> None:
    job_id = jobs.awaiting()
    created = _post(client, keys.reviewer, job_id, score=2, decision="correct", next_phases=["detect"]).json()
    client.put(f"/v1/jobs/{job_id}/reviews/interpretation", json={"score": 1, "decision": "accept"},
               headers=keys.reviewer.headers)
    refused = _post(client, keys.qa, job_id)
    events = [e for e in audit_events(sm) if e.job_id == job_id]
    assert [(e.action, e.outcome, e.api_key_id) for e in events] == [
        ("POST /v1/jobs/{job_id}/reviews", "ok", keys.reviewer.id),
        ("PUT /v1/jobs/{job_id}/reviews/{dimension}", "ok", keys.reviewer.id),
        ("POST /v1/jobs/{job_id}/reviews", "denied", keys.qa.id),
    ]
    assert refused.status_code == 403
    post, put = events[0].detail or {}, events[1].detail or {}
    assert {k: post[k] for k in ("review_id", "dimension", "score", "decision", "revision", "hitl", "next_phases")} \
        == {"review_id": created["id"], "dimension": "interpretation", "score": 2, "decision": "correct",
            "revision": 1, "hitl": "resumed", "next_phases": ["detect"]}
    assert {k: put[k] for k in ("review_id", "dimension", "score", "revision", "amended")} == {
        "review_id": created["id"], "dimension": "interpretation", "score": 1, "revision": 2, "amended": True}


def test_the_queue_lists_what_waits_for_this_reviewer_oldest_first(client: TestClient, keys: Keys, jobs: Jobs,
                                                                   second_reviewer: Key) -> None:
    awaiting = jobs.awaiting()
    gated = jobs.awaiting()  # gate reviewed, then the worker finished it: annotation pending
    assert _post(client, keys.admin, gated, next_phases=["detect"]).status_code == 201
    jobs.complete(gated, full_document())
    no_gate_review = jobs.hitl_succeeded()  # resumed without a review: both dimensions pending
    jobs.autonomous_succeeded()  # never waits
    in_second_stage = jobs.awaiting()
    assert _post(client, keys.admin, in_second_stage, next_phases=["detect"]).status_code == 201
    rejected = jobs.awaiting()
    assert _post(client, keys.admin, rejected, decision="reject").status_code == 201
    jobs.queued(JobMode.hitl)  # nothing to review yet

    def queue(key: Key, **params: Any) -> dict[str, Any]:
        r = client.get("/v1/reviews/queue", params=params, headers=key.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    seen, cursor, pages = [], None, 0
    while True:
        page = queue(keys.reviewer, limit=2, **({"cursor": cursor} if cursor else {}))
        seen += page["items"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 2
    assert [(i["id"], i["pending"]) for i in seen] == [
        (awaiting, ["interpretation"]), (gated, ["annotation"]), (no_gate_review, ["interpretation", "annotation"])]
    assert set(seen[0]) >= CONTRACT_JOB_FIELDS and seen[0]["status"] == "awaiting_review"
    # the second reviewer annotates one: it leaves their queue; the job still waits for its
    # interpretation review, so it stays in the first reviewer's queue (not annotated by them)
    assert _post(client, second_reviewer, no_gate_review, dimension="annotation").status_code == 201
    assert [i["id"] for i in queue(second_reviewer)["items"]] == [awaiting, gated]
    assert [(i["id"], i["pending"]) for i in queue(keys.reviewer)["items"]][2] == (no_gate_review,
                                                                                    ["interpretation"])
    # annotating the gated job makes it reviewed: out of every queue
    assert _post(client, keys.reviewer, gated, dimension="annotation").status_code == 201
    assert [i["id"] for i in queue(second_reviewer)["items"]] == [awaiting]
    assert_problem(client.get("/v1/reviews/queue", params={"cursor": "not-a-cursor"}, headers=keys.reviewer.headers),
                   422, "invalid_cursor")
    assert_problem(client.get("/v1/reviews/queue", params={"limit": 501}, headers=keys.reviewer.headers),
                   422, "invalid_request")
