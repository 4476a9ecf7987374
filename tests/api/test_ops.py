"""Operations (/healthz, /readyz, /metrics), unknown routes, and the generated OpenAPI."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from services.jobs import resume_hitl
from services.workers import beat, forget
from shared.db.models import Delivery, DeliveryKind, DeliveryStatus, Job, JobStatus, WorkerHeartbeat
from shared.db.types import utcnow

from .conftest import ClientFactory, Keys, close_app, make_settings
from .helpers import PROVENANCE, assert_problem, file_part, png, succeed_job


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_readyz_needs_a_live_worker(client: TestClient, sm: sessionmaker[Session]) -> None:
    r = client.get("/readyz")
    body = assert_problem(r, 503, "not_ready")
    assert "workers" in body["detail"]
    assert body["checks"]["database"] == "ok" and body["checks"]["broker"] == "ok"
    assert "heartbeat" in body["checks"]["workers"]

    with sm.begin() as session:
        beat(session, "host:1:gpu", provenance=PROVENANCE, queues="gpu")
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] == "ok" and body["checks"]["broker"] == "ok"
    assert "1 live" in body["checks"]["workers"] and "rev-42" in body["checks"]["workers"]

    # A heartbeat that stopped long ago no longer counts.
    with sm.begin() as session:
        session.execute(update(WorkerHeartbeat).values(heartbeat_at=utcnow() - timedelta(minutes=10)))
    assert_problem(client.get("/readyz"), 503, "not_ready")
    # Nor does a worker that said goodbye.
    with sm.begin() as session:
        beat(session, "host:1:gpu", provenance=PROVENANCE, queues="gpu")
    assert client.get("/readyz").status_code == 200
    with sm.begin() as session:
        forget(session, "host:1:gpu")
    assert_problem(client.get("/readyz"), 503, "not_ready")


def test_readyz_says_when_the_disk_of_a_sqlite_database_is_nearly_full(
        make_client: ClientFactory, sm: sessionmaker[Session], db_url: str) -> None:
    """SQLite: the free space of the database's file system is a check, failing below twice the
    largest request body (on a full disk reads still work and every submission fails). Here
    FADA_MAX_BODY_BYTES is raised past the real free space instead of filling a disk.
    PostgreSQL's disk is on its server, out of sight: no such check."""
    with sm.begin() as session:
        beat(session, "host:1:gpu", provenance=PROVENANCE, queues="gpu")
    ready = make_client().get("/readyz")
    assert ready.status_code == 200, ready.text
    if db_url.startswith("postgresql"):
        assert "disk" not in ready.json()["checks"]
        return
    assert ready.json()["checks"]["disk"].endswith("GiB free for the database")
    free = shutil.disk_usage(Path(db_url.removeprefix("sqlite:///")).parent).free
    body = assert_problem(make_client(max_body_bytes=free).get("/readyz"), 503, "not_ready")
    assert body["detail"] == "not ready: disk"
    assert "under twice FADA_MAX_BODY_BYTES" in body["checks"]["disk"]


def test_readyz_names_an_unreachable_database(tmp_path: Path, broker_url: str) -> None:
    app = create_app(make_settings("postgresql+psycopg://postgres@127.0.0.1:1/nothing", tmp_path, broker_url))
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            r = client.get("/readyz")
    finally:
        close_app(app)
    body = assert_problem(r, 503, "not_ready")
    assert "database" in body["detail"]
    assert body["checks"]["database"].startswith("unreachable")
    assert "postgres@" not in r.text  # the URL (credentials) is not shown


def test_readyz_names_an_unreachable_broker(sqlite_db_url: str, tmp_path: Path) -> None:
    app = create_app(make_settings(sqlite_db_url, tmp_path, "redis://127.0.0.1:1/0"))
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            body = assert_problem(client.get("/readyz"), 503, "not_ready")
    finally:
        close_app(app)
    assert "broker" in body["detail"]
    assert body["checks"]["broker"].startswith("unreachable")
    assert body["checks"]["database"] == "ok"


def test_readyz_names_an_unusable_embedded_broker(make_client: ClientFactory, sm: sessionmaker[Session]) -> None:
    client = make_client(broker_url="sqla+sqlite:////nonexistent-dir/fada/broker.db")
    with sm.begin() as session:
        beat(session, "host:1:gpu", provenance=PROVENANCE, queues="gpu")
    body = assert_problem(client.get("/readyz"), 503, "not_ready")
    assert "broker" in body["detail"]


def test_metrics(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    before = _samples(client.get("/metrics").text)
    submit_key = ("fada_http_requests_total", (("method", "POST"), ("route", "/v1/jobs"), ("status", "202")))
    jobs = [client.post("/v1/jobs", files=file_part(png(i)), headers=keys.submitter.headers).json()["id"]
            for i in range(3)]
    assert client.post(f"/v1/jobs/{jobs[0]}/cancel", headers=keys.submitter.headers).status_code == 200
    with sm.begin() as session:
        beat(session, "host:2:gpu", provenance=PROVENANCE, queues="gpu")

    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert 'fada_jobs{status="queued"} 2.0' in r.text
    after = _samples(r.text)
    assert after[("fada_jobs", (("status", "queued"),))] == 2
    assert after[("fada_jobs", (("status", "canceled"),))] == 1
    assert after[("fada_jobs", (("status", "succeeded"),))] == 0
    assert after[("fada_workers_live", ())] == 1
    assert after[submit_key] - before.get(submit_key, 0) == 3
    # Routes are labelled by template, never by a raw job id.
    assert not any(jobs[0] in str(labels) for _, labels in after)
    cancel_key = ("fada_http_requests_total",
                  (("method", "POST"), ("route", "/v1/jobs/{job_id}/cancel"), ("status", "200")))
    assert after[cancel_key] >= 1
    # a method a client invents does not become a label value of its own
    for invented in ("BREW", "X-SCAN-1", "X-SCAN-2"):
        client.request(invented, "/healthz")
    methods = {dict(labels).get("method") for name, labels in _samples(client.get("/metrics").text)
               if name == "fada_http_requests_total"}
    assert "other" in methods and not methods & {"BREW", "X-SCAN-1", "X-SCAN-2"}


def test_refused_requests_are_counted_under_their_route(client: TestClient, keys: Keys) -> None:
    """A 401 or 403 is answered before routing; it is still counted under the route's template
    (a 401 storm on one route shows as that route), never a raw id, and a path no route has
    stays "unmatched"."""
    job = client.post("/v1/jobs", files=file_part(png(7)), headers=keys.submitter.headers).json()["id"]
    before = _samples(client.get("/metrics").text)
    assert client.get(f"/v1/jobs/{job}").status_code == 401
    assert client.get(f"/v1/jobs/{job}/result", headers={"Authorization": "Bearer fada_wrong"}).status_code == 401
    assert client.delete("/v1/jobs", headers={"Authorization": "Bearer fada_wrong"}).status_code == 401
    assert client.get("/v1/no-such-route").status_code == 401
    after = _samples(client.get("/metrics").text)

    def grew(method: str, route: str) -> float:
        key = ("fada_http_requests_total", (("method", method), ("route", route), ("status", "401")))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("GET", "/v1/jobs/{job_id}") == 1
    assert grew("GET", "/v1/jobs/{job_id}/result") == 1
    assert grew("DELETE", "/v1/jobs") == 1  # the path's route, though no DELETE is routed there
    assert grew("GET", "/v1/no-such-route") == 0 and grew("GET", "unmatched") == 1
    assert not any(job in str(labels) for _, labels in after)


def test_metrics_say_how_long_the_oldest_work_has_waited(client: TestClient, keys: Keys,
                                                         sm: sessionmaker[Session]) -> None:
    """The figures an operator alerts on: how long the oldest queued job has waited for a
    worker and the oldest one awaiting review for a sonographer, queued jobs whose message is
    stuck, and webhooks or SR pushes still to send or given up."""
    empty = _samples(client.get("/metrics").text)
    for status in ("queued", "awaiting_review"):
        assert empty[("fada_jobs_oldest_waiting_seconds", (("status", status),))] == 0
    assert empty[("fada_jobs_unpublished", ())] == 0
    assert empty[("fada_deliveries", (("kind", "pacs_sr"), ("status", "failed")))] == 0
    assert empty[("fada_deliveries_oldest_pending_seconds", (("kind", "webhook"),))] == 0

    old, _fresh, hitl, resumed, done = (
        client.post("/v1/jobs", files=file_part(png(i)), data={"mode": mode},
                    headers=keys.submitter.headers).json()["id"]
        for i, mode in enumerate(("autonomous", "autonomous", "hitl", "hitl", "autonomous")))
    for job_id in (hitl, resumed):
        succeed_job(sm, job_id, awaiting_review=True)
    succeed_job(sm, done)
    now = utcnow()
    with sm.begin() as session:
        session.execute(update(Job).where(Job.id == old).values(waiting_since=now - timedelta(seconds=600),
                                                                unpublished=True))
        # Submitted two days ago, waiting for its reviewer for five hours.
        session.execute(update(Job).where(Job.id == hitl).values(created_at=now - timedelta(days=2),
                                                                 waiting_since=now - timedelta(hours=5)))
        # Submitted three days ago and resumed by its reviewer now: it has waited for a worker
        # for moments, not three days.
        session.execute(update(Job).where(Job.id == resumed).values(created_at=now - timedelta(days=3)))
        assert resume_hitl(session, resumed, {"next_phases": ["detect"], "group": None})
        # A finished job that waited long ago is not waiting: it must not count.
        session.execute(update(Job).where(Job.id == done).values(waiting_since=now - timedelta(days=3)))
        session.add_all([
            Delivery(job_id=done, kind=DeliveryKind.pacs_sr, event="job.succeeded", url="http://pacs.test/studies",
                     payload={}, created_at=now - timedelta(seconds=900)),
            Delivery(job_id=done, kind=DeliveryKind.webhook, event="job.succeeded", url="http://ris.test/hook",
                     payload={}, status=DeliveryStatus.failed, attempts=8),
        ])

    after = _samples(client.get("/metrics").text)
    queued_age = after[("fada_jobs_oldest_waiting_seconds", (("status", "queued"),))]
    review_age = after[("fada_jobs_oldest_waiting_seconds", (("status", "awaiting_review"),))]
    assert 600 <= queued_age < 660, queued_age  # the old one, not the fresh or the resumed one
    assert 5 * 3600 <= review_age < 5 * 3600 + 60, review_age
    assert after[("fada_jobs_unpublished", ())] == 1
    assert after[("fada_jobs", (("status", "queued"),))] == 3
    assert after[("fada_deliveries", (("kind", "pacs_sr"), ("status", "pending")))] == 1
    assert after[("fada_deliveries", (("kind", "webhook"), ("status", "failed")))] == 1
    assert after[("fada_deliveries", (("kind", "webhook"), ("status", "pending")))] == 0
    assert not any(name == "fada_deliveries" and ("status", "delivered") in labels for name, labels in after)
    assert 900 <= after[("fada_deliveries_oldest_pending_seconds", (("kind", "pacs_sr"),))] < 960
    assert after[("fada_deliveries_oldest_pending_seconds", (("kind", "webhook"),))] == 0

    # Once the queue moves on, the figure follows: the fresh or the resumed job is now the oldest.
    with sm.begin() as session:
        session.execute(update(Job).where(Job.id == old).values(status=JobStatus.canceled, unpublished=False))
    moved = _samples(client.get("/metrics").text)
    assert moved[("fada_jobs_oldest_waiting_seconds", (("status", "queued"),))] < 60
    assert moved[("fada_jobs_unpublished", ())] == 0


def test_unknown_route_is_a_404_problem(client: TestClient, keys: Keys, subtests: pytest.Subtests) -> None:
    for path in ("/nope", "/v1", "/v2/jobs", "/v1/jobs/x/y/z"):
        with subtests.test(path):
            assert_problem(client.get(path, headers=keys.admin.headers), 404, "not_found")


def test_wrong_method_is_a_405_problem(client: TestClient, keys: Keys) -> None:
    assert_problem(client.delete("/v1/jobs", headers=keys.admin.headers), 405, "method_not_allowed")
    assert_problem(client.put("/v1/batches", headers=keys.admin.headers), 405, "method_not_allowed")


CONTRACT_OPERATIONS = {
    ("post", "/v1/jobs"), ("get", "/v1/jobs"), ("get", "/v1/jobs/{job_id}"), ("get", "/v1/jobs/{job_id}/result"),
    ("get", "/v1/jobs/{job_id}/coco"), ("post", "/v1/jobs/{job_id}/cancel"), ("post", "/v1/batches"),
    ("get", "/v1/batches/{batch_id}"), ("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"),
}


def test_openapi_lists_the_contract(client: TestClient) -> None:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    spec = r.json()
    assert spec["openapi"].startswith("3.")
    operations = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert operations >= CONTRACT_OPERATIONS

    submit = spec["paths"]["/v1/jobs"]["post"]
    assert {"202", "413", "415", "422"} <= submit["responses"].keys()
    form_ref = submit["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    form = spec["components"]["schemas"][form_ref.rsplit("/", 1)[1]]
    assert "file" in form["required"]
    assert set(form["properties"]) >= {"file", "mode", "external_id", "frame"}
    assert form["properties"]["mode"]["enum"] == ["autonomous", "hitl"]
    assert form["properties"]["mode"]["default"] == "autonomous"
    params = {p["name"]: p for p in submit.get("parameters", [])}
    assert params["Idempotency-Key"]["in"] == "header"

    listing = {p["name"]: p for p in spec["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert {"status", "mode", "external_id", "review_state", "limit", "cursor"} <= listing.keys()
    assert listing["limit"]["schema"]["maximum"] == 500 and listing["limit"]["schema"]["default"] == 50

    job = spec["components"]["schemas"]["JobOut"]
    assert {"id", "status", "mode", "external_id", "created_at", "updated_at", "attempts", "error", "review_state",
            "result_url"} <= set(job["properties"])
    status_enum = spec["components"]["schemas"]["JobStatus"]["enum"]
    assert set(status_enum) == {"queued", "running", "awaiting_review", "succeeded", "failed", "canceled"}


# --- documentation bugs found by schemathesis (test_schemathesis.py tolerates exactly these) ---


def _spec(client: TestClient) -> dict[str, Any]:
    spec: dict[str, Any] = client.get("/openapi.json").json()
    return spec


def _v1_operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in spec["paths"].items() if path.startswith("/v1")
            for method, op in item.items()]


def test_openapi_documents_problem_json_for_422(client: TestClient, keys: Keys) -> None:
    r = client.get("/v1/jobs", params={"limit": 0}, headers=keys.qa.headers)
    assert r.headers["content-type"].startswith("application/problem+json")
    wrong = [f"{method} {path}" for method, path, op in _v1_operations(_spec(client))
             if "422" in op["responses"]
             and "application/problem+json" not in op["responses"]["422"].get("content", {})]
    assert wrong == []


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/batches"])
def test_openapi_documents_the_answer_to_a_malformed_multipart_body(client: TestClient, keys: Keys,
                                                                    path: str) -> None:
    r = client.post(path, content=b"--b\r\nnot a part header\r\n--b--\r\n",
                    headers={**keys.submitter.headers, "Content-Type": "multipart/form-data; boundary=b"})
    assert_problem(r, r.status_code)
    assert 400 <= r.status_code < 500
    assert str(r.status_code) in _spec(client)["paths"][path]["post"]["responses"]


def test_openapi_batch_needs_at_least_one_file(client: TestClient) -> None:
    spec = _spec(client)
    ref = spec["paths"]["/v1/batches"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    assert spec["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]["file"].get("minItems", 0) >= 1


def test_openapi_documents_authentication(client: TestClient) -> None:
    spec = _spec(client)
    schemes = spec.get("components", {}).get("securitySchemes", {})
    assert any(s.get("type") == "http" and s.get("scheme", "").lower() == "bearer" for s in schemes.values())
    for method, path, op in _v1_operations(spec):
        assert op.get("security") or spec.get("security"), f"{method} {path}"
        assert "401" in op["responses"], f"{method} {path}"
    assert "403" in spec["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["responses"]
