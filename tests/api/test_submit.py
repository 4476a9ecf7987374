"""POST /v1/jobs: accepted uploads (PNG, JPEG, DICOM), the job resource, what is stored, and
Idempotency-Key replays."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import IdempotencyKey, Image, Job

from .conftest import AppFactory, Keys, Serve
from .helpers import (
    CONTRACT_JOB_FIELDS,
    assert_problem,
    count,
    file_part,
    jpeg,
    multiframe_dicom,
    png,
    stored,
    ultrasound_dicom,
)


def _assert_job_resource(body: dict[str, object]) -> None:
    assert body.keys() >= CONTRACT_JOB_FIELDS, body
    assert str(uuid.UUID(str(body["id"]))) == body["id"]  # an opaque id, here a UUID
    assert body["mode"] in ("autonomous", "hitl")
    assert body["review_state"] in ("not_required", "pending", "reviewed")
    assert body["external_id"] is None or isinstance(body["external_id"], str)
    assert body["status"] == "queued"
    assert body["attempts"] == 0
    assert body["error"] is None
    assert body["result_url"] == f"/v1/jobs/{body['id']}/result"
    for field in ("created_at", "updated_at"):
        value = str(body[field])
        assert value.endswith("Z") or value.endswith("+00:00"), value  # RFC 3339, UTC
        offset = datetime.fromisoformat(value.replace("Z", "+00:00")).utcoffset()
        assert offset is not None and offset.total_seconds() == 0


@pytest.mark.parametrize(
    ("builder", "fmt", "size"),
    [(png, "png", (48, 32)), (jpeg, "jpeg", (64, 48)), (ultrasound_dicom, "dicom", None)],
    ids=["png", "jpeg", "dicom"],
)
def test_submit_each_format(client: TestClient, keys: Keys, sm: sessionmaker[Session],
                            builder: Callable[[], bytes], fmt: str, size: tuple[int, int] | None) -> None:
    data = builder()
    # A misleading name and content type: the format is detected from the content.
    r = client.post("/v1/jobs", files=file_part(data, name="image.txt", content_type="text/plain"),
                    headers=keys.submitter.headers)
    assert r.status_code == 202, r.text
    body = r.json()
    assert r.headers["location"] == f"/v1/jobs/{body['id']}"
    _assert_job_resource(body)
    assert body["mode"] == "autonomous"
    assert body["review_state"] == "not_required"
    assert body["external_id"] is None

    with sm() as session:
        job = session.get(Job, body["id"])
        assert job is not None
        assert job.status.value == "queued" and job.api_key_id == keys.submitter.id
        image = session.get(Image, job.image_id)
        assert image is not None
        assert image.format.value == fmt
        assert image.sha256 == hashlib.sha256(data).hexdigest()
        assert image.original_size_bytes == len(data)
        assert image.frame == 0
        if fmt != "dicom":
            assert (image.width, image.height) == size
        else:
            assert image.width > 0 and image.height > 0
            assert image.dicom_sop_instance_uid
    assert count(sm, Job) == 1 and count(sm, Image) == 1

    # What was stored reads back the same.
    again = client.get(f"/v1/jobs/{body['id']}", headers=keys.submitter.headers)
    assert again.status_code == 200
    assert again.json() == body


def test_dicom_ultrasound_size_and_spacing(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    ds = dcmread(str(get_testdata_file("examples_palette.dcm")))
    r = client.post("/v1/jobs", files=file_part(ultrasound_dicom()), headers=keys.submitter.headers)
    assert r.status_code == 202, r.text
    with sm() as session:
        image = session.scalars(select(Image)).one()
        assert (image.width, image.height) == (ds.Columns, ds.Rows)
        assert image.dicom_sop_instance_uid == ds.SOPInstanceUID


def test_hitl_with_external_id(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    external = "ACC-2024-0001/1.2.840.113619.2.55"
    r = client.post("/v1/jobs", files=file_part(png()), data={"mode": "hitl", "external_id": external},
                    headers=keys.submitter.headers)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["mode"] == "hitl"
    assert body["review_state"] == "pending"
    assert body["external_id"] == external
    with sm() as session:
        job = session.get(Job, body["id"])
        assert job is not None
        assert (job.mode.value, job.review_state.value, job.external_id) == ("hitl", "pending", external)


def test_external_id_of_exactly_128_chars_is_accepted(client: TestClient, keys: Keys) -> None:
    r = client.post("/v1/jobs", files=file_part(png()), data={"external_id": "x" * 128},
                    headers=keys.submitter.headers)
    assert r.status_code == 202, r.text
    assert r.json()["external_id"] == "x" * 128


def test_dicom_frame_is_chosen(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    r = client.post("/v1/jobs", files=file_part(multiframe_dicom(3)), data={"frame": "2"},
                    headers=keys.submitter.headers)
    assert r.status_code == 202, r.text
    with sm() as session:
        assert session.scalars(select(Image.frame)).one() == 2


def test_admin_may_submit(client: TestClient, keys: Keys) -> None:
    r = client.post("/v1/jobs", files=file_part(png()), headers=keys.admin.headers)
    assert r.status_code == 202, r.text


# --- Idempotency-Key ------------------------------------------------------------------------


def test_idempotent_replay_returns_the_original_job(client: TestClient, keys: Keys,
                                                    sm: sessionmaker[Session]) -> None:
    headers = {**keys.submitter.headers, "Idempotency-Key": "pacs-order-17"}
    first = client.post("/v1/jobs", files=file_part(png(1)), data={"mode": "hitl"}, headers=headers)
    assert first.status_code == 202, first.text
    # The same content under another file name is the same request.
    second = client.post("/v1/jobs", files=file_part(png(1), name="other.png"), data={"mode": "hitl"},
                         headers=headers)
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    assert second.json()["mode"] == "hitl"
    assert stored(sm)["jobs"] == 1 and stored(sm)["images"] == 1
    assert count(sm, IdempotencyKey) == 1


def test_idempotency_key_reused_with_another_request(client: TestClient, keys: Keys, sm: sessionmaker[Session],
                                                      subtests: pytest.Subtests) -> None:
    headers = {**keys.submitter.headers, "Idempotency-Key": "k-1"}
    first = client.post("/v1/jobs", files=file_part(png(1)), data={"mode": "hitl"}, headers=headers)
    assert first.status_code == 202
    others = {"other-content": (png(2), {"mode": "hitl"}), "other-mode": (png(1), {"mode": "autonomous"}),
              "other-external-id": (png(1), {"mode": "hitl", "external_id": "A"}),
              "other-frame": (png(1), {"mode": "hitl", "frame": "1"})}
    for name, (content, fields) in others.items():
        with subtests.test(name):
            r = client.post("/v1/jobs", files=file_part(content), data=fields, headers=headers)
            body = assert_problem(r, 422, "idempotency_key_reused")
            assert "k-1" in body["detail"]
            assert stored(sm)["jobs"] == 1
    # The original request still replays.
    assert client.post("/v1/jobs", files=file_part(png(1)), data={"mode": "hitl"}, headers=headers).status_code == 200


def test_idempotency_keys_are_scoped_per_api_key(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    a = client.post("/v1/jobs", files=file_part(png(1)),
                    headers={**keys.submitter.headers, "Idempotency-Key": "shared"})
    b = client.post("/v1/jobs", files=file_part(png(1)),
                    headers={**keys.other_submitter.headers, "Idempotency-Key": "shared"})
    assert (a.status_code, b.status_code) == (202, 202)
    assert a.json()["id"] != b.json()["id"]
    assert stored(sm)["jobs"] == 2
    # Each key replays its own job.
    again = client.post("/v1/jobs", files=file_part(png(1)),
                        headers={**keys.other_submitter.headers, "Idempotency-Key": "shared"})
    assert again.status_code == 200 and again.json()["id"] == b.json()["id"]


def test_without_idempotency_key_each_post_is_a_new_job(client: TestClient, keys: Keys,
                                                         sm: sessionmaker[Session]) -> None:
    ids = {client.post("/v1/jobs", files=file_part(png(1)), headers=keys.submitter.headers).json()["id"]
           for _ in range(2)}
    assert len(ids) == 2 and stored(sm)["jobs"] == 2


def test_refused_upload_does_not_burn_its_idempotency_key(client: TestClient, keys: Keys,
                                                          sm: sessionmaker[Session]) -> None:
    headers = {**keys.submitter.headers, "Idempotency-Key": "retry-me"}
    bad = client.post("/v1/jobs", files=file_part(b"not an image"), headers=headers)
    assert_problem(bad, 415)
    assert count(sm, IdempotencyKey) == 0
    good = client.post("/v1/jobs", files=file_part(png()), headers=headers)
    assert good.status_code == 202, good.text




@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/batches"])
def test_the_loser_of_an_idempotency_race_answers_with_the_winner(client: TestClient, keys: Keys,
                                                                 sm: sessionmaker[Session],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 route: str) -> None:
    """Deterministic form of the race below: the second request's first look-up of its key
    happens before the first request commits (simulated: the look-up finds nothing), so it
    meets the key only when it stores its own (the UNIQUE constraint)."""
    headers = {**keys.submitter.headers, "Idempotency-Key": "race-0"}
    first = client.post(route, files=file_part(png(5)), headers=headers)
    assert first.status_code == 202, first.text
    monkeypatch.setattr("services.jobs.intake.find_idempotent", lambda *args, **kwargs: None)
    second = client.post(route, files=file_part(png(5)), headers=headers)
    assert stored(sm)["jobs"] == 1  # the loser's rows were rolled back (true today already)
    assert second.status_code == 200, second.text
    assert second.json()["id"] == first.json()["id"]


def test_concurrent_requests_with_one_idempotency_key_make_one_job(make_app: AppFactory, serve: Serve, keys: Keys,
                                                                   sm: sessionmaker[Session]) -> None:
    """Racing requests with the same key (a PACS bridge retrying on a timeout) through a real
    server: one job, every answer names it, exactly one of them is the 202."""
    base_url = serve(make_app())
    data = png(5)
    headers = {**keys.submitter.headers, "Idempotency-Key": "race-1"}
    barrier = threading.Barrier(4)

    def post() -> httpx.Response:
        with httpx.Client(base_url=base_url, timeout=30) as http:
            barrier.wait()
            return http.post("/v1/jobs", files=file_part(data), headers=headers)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(), range(4)))
    assert stored(sm)["jobs"] == 1 and stored(sm)["images"] == 1 and count(sm, IdempotencyKey) == 1
    assert sorted(r.status_code for r in answers) == [200, 200, 200, 202], [r.text for r in answers]
    assert len({r.json()["id"] for r in answers}) == 1


@pytest.mark.parametrize(
    ("method", "path", "fields", "extra_headers"),
    [("GET", "/v1/jobs/a%00b", None, {}), ("GET", "/v1/batches/a%00b", None, {}),
     ("POST", "/v1/jobs", {"external_id": "ACC\x00"}, {}), ("POST", "/v1/batches", {"external_id": "ACC\x00"}, {}),
     ("POST", "/v1/jobs", {}, {"Idempotency-Key": "k\x00"})],
    ids=["job-id", "batch-id", "external-id", "batch-external-id", "idempotency-key"],
)
def test_nul_characters_are_not_a_server_error(request: pytest.FixtureRequest, db_url: str, client: TestClient,
                                               keys: Keys, method: str, path: str, fields: dict[str, str] | None,
                                               extra_headers: dict[str, str]) -> None:
    files = file_part(png()) if method == "POST" else None
    r = client.request(method, path, files=files, data=fields, headers={**keys.submitter.headers, **extra_headers})
    assert r.status_code < 500, r.text


@pytest.mark.parametrize(("method", "path", "role"), [
    ("GET", "/v1/jobs/a%00b/reviews", "qa"), ("GET", "/v1/jobs/a%00b/reviews/interpretation", "reviewer"),
    ("POST", "/v1/jobs/a%00b/reviews", "reviewer"), ("PUT", "/v1/jobs/a%00b/reviews/annotation", "reviewer"),
    ("GET", "/v1/evaluations/a%00b", "qa"), ("GET", f"/v1/jobs/{'a' * 65}/reviews", "qa"),
])
def test_ids_in_review_and_evaluation_paths_are_checked_like_job_ids(
        client: TestClient, keys: Keys, method: str, path: str, role: str) -> None:
    body = {"dimension": "interpretation", "score": 2} if method != "GET" else None
    r = client.request(method, path, json=body, headers=getattr(keys, role).headers)
    assert_problem(r, 422, "invalid_request")
