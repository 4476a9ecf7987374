"""POST /v1/batches (all or nothing) and GET /v1/batches/{id} (counts per status)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Batch, Image, Job

from .conftest import ClientFactory, Keys
from .helpers import (
    CONTRACT_JOB_FIELDS,
    NOTHING_STORED,
    assert_problem,
    enqueued_job_ids,
    jpeg,
    png,
    stored,
    ultrasound_dicom,
)

ALL_STATUSES = {"queued", "running", "awaiting_review", "succeeded", "failed", "canceled"}


def _files(*blobs: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"scan-{i}.bin", blob, "application/octet-stream")) for i, blob in enumerate(blobs)]


def test_batch_of_three(client: TestClient, keys: Keys, sm: sessionmaker[Session], broker_url: str) -> None:
    r = client.post("/v1/batches", files=_files(png(), jpeg(), ultrasound_dicom()), data={"external_id": "STUDY-9"},
                    headers=keys.submitter.headers)
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    assert r.headers["location"] == f"/v1/batches/{body['id']}"
    assert len(body["jobs"]) == 3
    for job in body["jobs"]:
        assert job.keys() >= CONTRACT_JOB_FIELDS
        assert (job["status"], job["mode"], job["external_id"]) == ("queued", "autonomous", "STUDY-9")
        assert job["batch_id"] == body["id"]
    job_ids = [j["id"] for j in body["jobs"]]
    assert len(set(job_ids)) == 3

    with sm() as session:
        assert session.get(Batch, body["id"]) is not None
        rows = {j.id: j for j in session.scalars(select(Job))}
        assert set(rows) == set(job_ids)
        formats = [session.get(Image, rows[j].image_id).format.value for j in job_ids]  # type: ignore[union-attr]
        assert formats == ["png", "jpeg", "dicom"]  # jobs in upload order
    assert stored(sm) == {"jobs": 3, "images": 3, "batches": 1, "results": 0, "idempotency_keys": 0}
    assert set(job_ids) <= set(enqueued_job_ids(broker_url))

    status = client.get(f"/v1/batches/{body['id']}", headers=keys.submitter.headers)
    assert status.status_code == 200, status.text
    counts = status.json()
    assert counts["id"] == body["id"] and counts["total"] == 3
    assert counts["counts"] == {s: (3 if s == "queued" else 0) for s in ALL_STATUSES}
    assert counts["jobs_url"] == f"/v1/jobs?batch_id={body['id']}"

    # The counts follow the jobs.
    assert client.post(f"/v1/jobs/{job_ids[1]}/cancel", headers=keys.submitter.headers).status_code == 200
    counts = client.get(f"/v1/batches/{body['id']}", headers=keys.submitter.headers).json()
    assert (counts["total"], counts["counts"]["queued"], counts["counts"]["canceled"]) == (3, 2, 1)


def test_batch_options_apply_to_every_job(client: TestClient, keys: Keys) -> None:
    r = client.post("/v1/batches", files=_files(png(1), png(2)), data={"mode": "hitl"},
                    headers=keys.submitter.headers)
    assert r.status_code == 202
    assert {(j["mode"], j["review_state"]) for j in r.json()["jobs"]} == {("hitl", "pending")}


@pytest.mark.parametrize(
    ("bad", "status", "code"),
    [(b"", 422, "empty_file"), (b"just some text", 415, "unsupported_media_type"),
     (png()[:100], 422, "undecodable_image")],
    ids=["empty", "text", "truncated"],
)
def test_one_bad_file_refuses_the_whole_batch(client: TestClient, keys: Keys, sm: sessionmaker[Session],
                                              broker_url: str, bad: bytes, status: int, code: str) -> None:
    before = enqueued_job_ids(broker_url)
    r = client.post("/v1/batches", files=_files(png(1), bad, png(2)), headers=keys.submitter.headers)
    body = assert_problem(r, status, code)
    assert body["detail"].startswith("file 2 of 3 (scan-1.bin): ")  # counted as people count
    assert body["file_index"] == 1  # the 0-based position of its part, for programs
    assert stored(sm) == NOTHING_STORED
    assert enqueued_job_ids(broker_url) == before


def test_batch_without_files(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    body = assert_problem(client.post("/v1/batches", data={"mode": "hitl"}, headers=keys.submitter.headers), 422,
                          "invalid_request")
    assert "file" in body["detail"]
    assert stored(sm) == NOTHING_STORED


def test_too_many_files(make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session]) -> None:
    client = make_client(max_batch_files=2)
    body = assert_problem(client.post("/v1/batches", files=_files(png(1), png(2), png(3)),
                                      headers=keys.submitter.headers), 422, "too_many_files")
    assert "2" in body["detail"]
    assert stored(sm) == NOTHING_STORED
    assert client.post("/v1/batches", files=_files(png(1), png(2)), headers=keys.submitter.headers).status_code == 202


def test_batch_idempotent_replay(client: TestClient, keys: Keys, sm: sessionmaker[Session]) -> None:
    headers = {**keys.submitter.headers, "Idempotency-Key": "batch-2024-11-01"}
    first = client.post("/v1/batches", files=_files(png(1), png(2), png(3)), headers=headers)
    assert first.status_code == 202, first.text
    replay = client.post("/v1/batches", files=_files(png(1), png(2), png(3)), headers=headers)
    assert replay.status_code == 200, replay.text
    assert replay.json()["id"] == first.json()["id"]
    assert [j["id"] for j in replay.json()["jobs"]] == [j["id"] for j in first.json()["jobs"]]
    assert replay.headers["location"] == first.headers["location"]
    assert stored(sm)["batches"] == 1 and stored(sm)["jobs"] == 3

    # Other files (or the files in another order) under the same key: 422, nothing more stored.
    for files in (_files(png(1), png(2)), _files(png(3), png(2), png(1))):
        assert_problem(client.post("/v1/batches", files=files, headers=headers), 422, "idempotency_key_reused")
    assert stored(sm)["batches"] == 1 and stored(sm)["jobs"] == 3


def test_a_key_used_for_a_job_cannot_be_reused_for_a_batch(client: TestClient, keys: Keys,
                                                           sm: sessionmaker[Session]) -> None:
    headers = {**keys.submitter.headers, "Idempotency-Key": "one-key"}
    assert client.post("/v1/jobs", files=_files(png(1)), headers=headers).status_code == 202
    assert_problem(client.post("/v1/batches", files=_files(png(1)), headers=headers), 422, "idempotency_key_reused")
    assert stored(sm)["jobs"] == 1 and stored(sm)["batches"] == 0


def test_unknown_batch(client: TestClient, keys: Keys) -> None:
    assert_problem(client.get("/v1/batches/00000000-0000-4000-8000-000000000000", headers=keys.admin.headers), 404,
                   "batch_not_found")
