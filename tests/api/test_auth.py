"""Authentication (401), roles (403), and who sees which jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from services.keys import revoke_key
from shared.db.models import ApiKey
from shared.db.types import utcnow

from .conftest import Keys
from .helpers import NOTHING_STORED, assert_problem, file_part, png, stored

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"

# Every /v1 route, with a body where it takes one.
V1_ROUTES = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", f"/v1/jobs/{UNKNOWN_ID}"),
    ("GET", f"/v1/jobs/{UNKNOWN_ID}/result"),
    ("GET", f"/v1/jobs/{UNKNOWN_ID}/coco"),
    ("POST", f"/v1/jobs/{UNKNOWN_ID}/cancel"),
    ("POST", "/v1/batches"),
    ("GET", f"/v1/batches/{UNKNOWN_ID}"),
    ("GET", "/v1/no-such-route"),
]


def _call(client: TestClient, method: str, path: str, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    files = file_part(png()) if method == "POST" and path in ("/v1/jobs", "/v1/batches") else None
    return client.request(method, path, files=files, headers=headers)


def _assert_unauthorized(r) -> None:  # type: ignore[no-untyped-def]
    assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].lower().startswith("bearer")


def test_v1_routes_need_a_key(client: TestClient, sm: sessionmaker[Session], subtests: pytest.Subtests) -> None:
    for method, path in V1_ROUTES:
        with subtests.test(f"{method} {path}"):
            _assert_unauthorized(_call(client, method, path, {}))
    assert stored(sm) == NOTHING_STORED


BAD_AUTHORIZATION = {"empty": "", "bearer-only": "Bearer", "bearer-blank": "Bearer ", "basic": "Basic dXNlcjpwYXNz",
                     "unknown-key": "Bearer fada_not-a-key", "no-scheme": "fada_not-a-key"}


def test_bad_authorization_header(client: TestClient, keys: Keys, sm: sessionmaker[Session],
                                  subtests: pytest.Subtests) -> None:
    for name, authorization in BAD_AUTHORIZATION.items():
        for method, path in (("POST", "/v1/jobs"), ("GET", "/v1/jobs")):
            with subtests.test(f"{name} {method}"):
                _assert_unauthorized(_call(client, method, path, {"Authorization": authorization}))
    assert stored(sm) == NOTHING_STORED


def test_the_secret_of_a_valid_key_with_the_wrong_scheme_is_refused(client: TestClient, keys: Keys) -> None:
    _assert_unauthorized(client.get("/v1/jobs", headers={"Authorization": f"Token {keys.admin.secret}"}))
    _assert_unauthorized(client.get("/v1/jobs", headers={"Authorization": keys.admin.secret}))


def test_bearer_scheme_is_case_insensitive(client: TestClient, keys: Keys) -> None:
    assert client.get("/v1/jobs", headers={"Authorization": f"bearer {keys.qa.secret}"}).status_code == 200


def test_revoked_key(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    assert client.get("/v1/jobs", headers=keys.submitter.headers).status_code == 200
    with sm.begin() as session:
        revoke_key(session, keys.submitter.id)
    r = client.get("/v1/jobs", headers=keys.submitter.headers)
    _assert_unauthorized(r)
    assert "revoked" in r.json()["detail"]
    r = client.post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers)
    _assert_unauthorized(r)
    assert stored(sm) == NOTHING_STORED
    # The other keys still work.
    assert client.get("/v1/jobs", headers=keys.other_submitter.headers).status_code == 200


def test_an_expired_key_is_refused_like_a_revoked_one(client: TestClient, keys: Keys,
                                                     sm: sessionmaker[Session]) -> None:
    with sm.begin() as session:  # expires in a minute: still good
        session.execute(update(ApiKey).where(ApiKey.id == keys.submitter.id)
                        .values(expires_at=utcnow() + timedelta(minutes=1)))
    assert client.get("/v1/jobs", headers=keys.submitter.headers).status_code == 200
    with sm.begin() as session:  # expired a second ago
        session.execute(update(ApiKey).where(ApiKey.id == keys.submitter.id)
                        .values(expires_at=utcnow() - timedelta(seconds=1)))
    r = client.post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers)
    _assert_unauthorized(r)
    assert "expired" in r.json()["detail"] and stored(sm) == NOTHING_STORED
    assert client.get("/v1/jobs", headers=keys.other_submitter.headers).status_code == 200


def test_unknown_key_uploads_nothing_even_when_the_body_is_too_large(make_client, keys: Keys,  # type: ignore[no-untyped-def]
                                                                     sm: sessionmaker[Session]) -> None:
    client = make_client(max_body_bytes=4096)
    r = client.post("/v1/jobs", files=file_part(png(width=100, height=100)),
                    headers={"Authorization": "Bearer nope"})
    _assert_unauthorized(r)  # authentication comes before the body
    assert stored(sm) == NOTHING_STORED


FORBIDDEN = [
    ("reviewer", "POST", "/v1/jobs"),
    ("qa", "POST", "/v1/jobs"),
    ("reviewer", "POST", "/v1/batches"),
    ("qa", "POST", "/v1/batches"),
    ("qa", "POST", "/v1/jobs/{job}/cancel"),
    ("reviewer", "POST", "/v1/jobs/{job}/cancel"),
]


def test_wrong_role_is_forbidden(client: TestClient, keys: Keys, sm: sessionmaker[Session],
                                 subtests: pytest.Subtests) -> None:
    job = client.post("/v1/jobs", files=file_part(png(9)), headers=keys.submitter.headers).json()["id"]
    before = stored(sm)
    for role, method, path in FORBIDDEN:
        with subtests.test(f"{role} {method} {path}"):
            r = _call(client, method, path.format(job=job), getattr(keys, role).headers)
            body = assert_problem(r, 403, "forbidden")
            assert "submitter" in body["detail"]
            assert stored(sm) == before
    assert client.get(f"/v1/jobs/{job}", headers=keys.submitter.headers).json()["status"] == "queued"


def test_admin_may_do_everything(client: TestClient, keys: Keys) -> None:
    h = keys.admin.headers
    job = client.post("/v1/jobs", files=file_part(png()), headers=h)
    assert job.status_code == 202
    job_id = job.json()["id"]
    batch = client.post("/v1/batches", files=[("file", ("a.png", png(1), "image/png"))], headers=h)
    assert batch.status_code == 202
    assert client.get(f"/v1/batches/{batch.json()['id']}", headers=h).status_code == 200
    assert client.get("/v1/jobs", headers=h).status_code == 200
    assert client.get(f"/v1/jobs/{job_id}", headers=h).status_code == 200
    assert_problem(client.get(f"/v1/jobs/{job_id}/result", headers=h), 409, "result_not_ready")
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=h).json()["status"] == "canceled"


def test_operations_routes_need_no_key(client: TestClient, subtests: pytest.Subtests) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"):
        with subtests.test(path):
            r = client.get(path)
            assert r.status_code in (200, 503)  # /readyz: 503 without a worker, but never 401
            assert "www-authenticate" not in r.headers


# --- visibility ------------------------------------------------------------------------------


def test_submitters_see_only_their_own_jobs(client: TestClient, keys: Keys) -> None:
    mine = client.post("/v1/jobs", files=file_part(png(1)), data={"external_id": "mine"},
                       headers=keys.submitter.headers).json()["id"]
    theirs = client.post("/v1/jobs", files=file_part(png(2)), headers=keys.other_submitter.headers).json()["id"]

    other = keys.other_submitter.headers
    for path in (f"/v1/jobs/{mine}", f"/v1/jobs/{mine}/result", f"/v1/jobs/{mine}/coco"):
        body = assert_problem(client.get(path, headers=other), 404, "job_not_found")
        assert mine in body["detail"]
    assert_problem(client.post(f"/v1/jobs/{mine}/cancel", headers=other), 404, "job_not_found")
    assert client.get(f"/v1/jobs/{mine}", headers=keys.submitter.headers).json()["status"] == "queued"

    listed = client.get("/v1/jobs", headers=other).json()
    assert [j["id"] for j in listed["items"]] == [theirs]
    assert client.get("/v1/jobs", params={"external_id": "mine"}, headers=other).json()["items"] == []
    assert [j["id"] for j in client.get("/v1/jobs", headers=keys.submitter.headers).json()["items"]] == [mine]


@pytest.mark.parametrize("role", ["reviewer", "qa", "admin"])
def test_readers_see_every_job(client: TestClient, keys: Keys, role: str) -> None:
    a = client.post("/v1/jobs", files=file_part(png(1)), headers=keys.submitter.headers).json()["id"]
    b = client.post("/v1/jobs", files=file_part(png(2)), headers=keys.other_submitter.headers).json()["id"]
    h = getattr(keys, role).headers
    assert {j["id"] for j in client.get("/v1/jobs", headers=h).json()["items"]} == {a, b}
    for job in (a, b):
        assert client.get(f"/v1/jobs/{job}", headers=h).json()["id"] == job
        assert_problem(client.get(f"/v1/jobs/{job}/result", headers=h), 409, "result_not_ready")


def test_submitters_see_only_their_own_batches(client: TestClient, keys: Keys) -> None:
    batch = client.post("/v1/batches", files=[("file", ("a.png", png(1), "image/png"))],
                        headers=keys.submitter.headers).json()["id"]
    assert_problem(client.get(f"/v1/batches/{batch}", headers=keys.other_submitter.headers), 404, "batch_not_found")
    assert client.get(f"/v1/batches/{batch}", headers=keys.reviewer.headers).status_code == 200
    listed = client.get("/v1/jobs", params={"batch_id": batch}, headers=keys.other_submitter.headers).json()
    assert listed["items"] == []


@pytest.mark.parametrize(("method", "path", "role"), [
    ("GET", "/v1/reports/scores?x=1", "submitter"),  # wrong role and an unknown parameter
    ("POST", "/v1/jobs?x=1", "reviewer"),
    ("GET", "/v1/reviews/queue?page=2", "submitter"),
])
def test_the_role_is_checked_before_the_inputs(client: TestClient, keys: Keys, method: str, path: str,
                                               role: str) -> None:
    """Known key, wrong role: 403, not a 422 that lists what the route takes to a key that may
    not use it."""
    files = file_part(png()) if method == "POST" else None
    r = client.request(method, path, files=files, headers=getattr(keys, role).headers)
    assert_problem(r, 403, "forbidden")
