"""HEAD on every GET route answers as the GET would (status, Content-Type, Content-Length of the
GET body, auth, role and input checks, problem+json on errors), with no body; a route without
GET stays 405 with Allow. It is audited and counted as HEAD, and the OpenAPI document does not
list it (one operation per route)."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import Message

from .conftest import AppFactory, Keys, Serve
from .helpers import PROBLEM_TYPE, audit_events, file_part, png, succeed_job, ultrasound_dicom


def assert_head_like_get(client: TestClient, path: str, headers: dict[str, str] | None = None) -> Any:
    """HEAD ``path``, then GET it: the same status and entity headers, and HEAD has no body."""
    head = client.head(path, headers=headers)
    get = client.get(path, headers=headers)
    assert head.status_code == get.status_code, (path, head.status_code, get.status_code, get.text[:300])
    assert head.headers["content-type"] == get.headers["content-type"], path
    assert head.headers["content-length"] == str(len(get.content)), path
    for name in ("allow", "www-authenticate", "retry-after", "content-disposition"):
        assert head.headers.get(name) == get.headers.get(name), (path, name)
    assert head.content == b""
    return head


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/openapi.json", "/docs", "/redoc",
                                  "/docs/static/swagger-ui.css"])
def test_operations_and_docs_routes_answer_head(client: TestClient, path: str) -> None:
    assert_head_like_get(client, path)


def test_metrics_answer_head(client: TestClient) -> None:
    head = client.head("/metrics")  # its body changes with every request: no length to compare
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/plain")
    assert int(head.headers["content-length"]) > 0 and head.content == b""


def test_v1_routes_answer_head_with_the_same_checks_as_get(client: TestClient, keys: Keys,
                                                            sm: sessionmaker[Session]) -> None:
    auth = keys.submitter.headers
    job_id = client.post("/v1/jobs", files=file_part(png()), headers=auth).json()["id"]
    dicom_job = client.post("/v1/jobs", files=file_part(ultrasound_dicom()), headers=auth).json()["id"]
    succeed_job(sm, dicom_job)

    for path in (f"/v1/jobs/{job_id}", "/v1/jobs", "/v1/jobs?status=queued", f"/v1/jobs/{dicom_job}/result",
                 f"/v1/jobs/{dicom_job}/coco", f"/v1/jobs/{job_id}/deliveries"):
        assert assert_head_like_get(client, path, auth).status_code == 200, path
    report = assert_head_like_get(client, f"/v1/jobs/{dicom_job}/sr.dcm", keys.qa.headers)
    assert report.status_code == 200 and report.headers["content-type"] == "application/dicom"
    assert int(report.headers["content-length"]) > 1000

    refusals = [
        (f"/v1/jobs/{job_id}", None, 401),  # no key
        (f"/v1/jobs/{job_id}", {"Authorization": "Bearer nope"}, 401),  # unknown key
        ("/v1/reviews/queue", auth, 403),  # a submitter is no reviewer
        ("/v1/jobs/no-such-job", auth, 404),
        (f"/v1/jobs/{job_id}/result", auth, 409),  # no result yet
        (f"/v1/jobs/{job_id}/sr.dcm", auth, 409),
        ("/v1/jobs?stauts=failed", auth, 422),  # a query parameter the route does not take
        ("/v1/jobs?status=queued&status=failed", auth, 422),  # a single-valued one twice
        ("/v1/jobs?limit=0", auth, 422),
    ]
    for path, headers, status in refusals:
        head = assert_head_like_get(client, path, headers)
        assert head.status_code == status, path
        assert head.headers["content-type"] == PROBLEM_TYPE, path


def test_head_on_a_route_without_get_is_405_with_allow(client: TestClient, keys: Keys) -> None:
    job_id = client.post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers).json()["id"]
    for path in (f"/v1/jobs/{job_id}/cancel", "/dicomweb/studies", "/v1/batches"):
        head = client.head(path, headers=keys.submitter.headers)
        assert head.status_code == 405, path
        assert head.headers["allow"] == "POST", path
        assert head.headers["content-type"] == PROBLEM_TYPE and head.content == b""


def _head_requests(text: str, route: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "fada_http_requests_total" and s.labels["method"] == "HEAD"
               and s.labels["route"] == route and s.labels["status"] == "200")


def test_head_is_audited_and_counted_as_head(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    job_id = client.post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers).json()["id"]
    before = _head_requests(client.get("/metrics").text, "/v1/jobs/{job_id}")
    head = client.head(f"/v1/jobs/{job_id}", headers={**keys.submitter.headers, "X-Request-ID": "head-1"})
    assert head.status_code == 200 and head.headers["x-request-id"] == "head-1"
    events = [e for e in audit_events(sm) if e.request_id == "head-1"]
    assert [(e.action, e.job_id, e.api_key_id, e.outcome) for e in events] == [
        ("HEAD /v1/jobs/{job_id}", job_id, keys.submitter.id, "ok")]
    assert events[0].detail is not None and events[0].detail["method"] == "HEAD"
    assert _head_requests(client.get("/metrics").text, "/v1/jobs/{job_id}") == before + 1


def test_openapi_lists_no_head_operation(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert paths["/v1/jobs/{job_id}"].keys() == {"get"}
    assert not [path for path, item in paths.items() if "head" in item]


async def _call(app: FastAPI, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> list[Message]:
    """One request straight to the ASGI app, no server or test client in between."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers], "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    await app(scope, receive, send)
    return sent


def test_the_app_itself_sends_no_body_for_head(make_app: AppFactory, keys: Keys) -> None:
    """Servers drop a HEAD body anyway; the app does not send one to begin with."""
    app = make_app()
    auth = [(b"authorization", f"Bearer {keys.submitter.secret}".encode())]
    for path in ("/healthz", "/v1/jobs", "/v1/jobs/no-such-job"):
        get = anyio.run(_call, app, "GET", path, auth)
        head = anyio.run(_call, app, "HEAD", path, auth)
        body = b"".join(m.get("body", b"") for m in get if m["type"] == "http.response.body")
        assert head[0]["type"] == "http.response.start" and head[0]["status"] == get[0]["status"]
        head_headers = dict(head[0]["headers"])
        assert head_headers[b"content-length"] == str(len(body)).encode() and len(body) > 0
        assert head_headers[b"content-type"] == dict(get[0]["headers"])[b"content-type"]
        assert all(m.get("body", b"") == b"" for m in head if m["type"] == "http.response.body")


def test_head_through_a_real_server(make_app: AppFactory, serve: Serve, keys: Keys) -> None:
    base = serve(make_app())
    for path, headers in (("/healthz", {}), ("/v1/jobs", keys.submitter.headers)):
        head = httpx.head(f"{base}{path}", headers=headers)
        get = httpx.get(f"{base}{path}", headers=headers)
        assert head.status_code == get.status_code == 200
        assert head.headers["content-length"] == str(len(get.content)) and head.content == b""
