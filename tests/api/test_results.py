"""GET /v1/jobs/{id}/result and /coco, and POST /v1/jobs/{id}/cancel, in every job state.

No worker runs here: states after ``queued`` are reached through ``services.jobs`` (claim,
complete, fail), the same calls a worker makes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import fail
from shared.db.models import Job
from shared.schemas.results import ResultDocument

from .conftest import Keys
from .helpers import OWNER, PROFILE, assert_problem, category_id, file_part, png, run_job, succeed_job

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"

# The contract's result document fields.
RESULT_FIELDS = {"job_id", "status", "model", "image", "interpretation", "classification", "mapping", "detections",
                 "segmentations", "keypoints", "phases"}


Submit = Callable[..., str]


@pytest.fixture
def submit(client: TestClient, keys: Keys) -> Submit:
    def _submit(**fields: str) -> str:
        r = client.post("/v1/jobs", files=file_part(png()), data=fields, headers=keys.submitter.headers)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    return _submit


def _status(sm: sessionmaker[Session], job_id: str) -> str:
    with sm() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.status.value


# --- results ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["result", "coco"])
def test_no_result_yet_is_409(client: TestClient, keys: Keys, submit: Submit, sm: sessionmaker[Session],
                              path: str) -> None:
    job = submit()
    body = assert_problem(client.get(f"/v1/jobs/{job}/{path}", headers=keys.submitter.headers), 409,
                          "result_not_ready")
    assert body["current_status"] == "queued"
    run_job(sm, job)
    body = assert_problem(client.get(f"/v1/jobs/{job}/{path}", headers=keys.submitter.headers), 409,
                          "result_not_ready")
    assert body["current_status"] == "running"


@pytest.mark.parametrize("path", ["", "/result", "/coco"])
def test_unknown_job_is_404(client: TestClient, keys: Keys, path: str) -> None:
    body = assert_problem(client.get(f"/v1/jobs/{UNKNOWN_ID}{path}", headers=keys.admin.headers), 404,
                          "job_not_found")
    assert UNKNOWN_ID in body["detail"]


def test_result_of_a_succeeded_job(client: TestClient, keys: Keys, submit: Submit, sm: sessionmaker[Session]) -> None:
    job = submit()
    document = succeed_job(sm, job)
    r = client.get(f"/v1/jobs/{job}/result", headers=keys.submitter.headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body.keys() >= RESULT_FIELDS
    assert body["job_id"] == job and body["status"] == "succeeded"
    assert body["interpretation"] is None and body["mapping"] is None  # nulls are present, not dropped
    assert body["model"] == {"base": "tiny/base", "adapter": "tiny/adapter", "revision": "rev-7",
                             "profile": "fada-skd", "untrained": True}
    # a document without its frame (as stored before results named it) gets it from the image
    assert body["image"] == {"width": 48, "height": 32, "sha256": "a" * 64, "format": "png",
                             "pixel_spacing_mm": [0.1, 0.1], "frame": 0, "frame_count": 1}
    assert body["classification"] == {"label": "head"}
    assert [d["bbox"] for d in body["detections"]] == [[1, 2, 10, 4], [20, 5, 6, 8]]
    assert [d["category_id"] for d in body["detections"]] == [category_id("NT"), category_id("NB")]
    assert body["segmentations"][0]["segmentation"] == [[2, 2, 22, 2, 22, 22, 2, 22]]
    assert body["keypoints"][0]["keypoints"] == [5, 5, 2, 15, 15, 2]
    assert body["phases"]["classify"]["status"] == "ok" and body["phases"]["classify"]["latency_ms"] == 12.5
    assert ResultDocument.model_validate(body).detections == document.detections

    job_body = client.get(f"/v1/jobs/{job}", headers=keys.submitter.headers).json()
    assert job_body["status"] == "succeeded"
    assert job_body["result_url"] == f"/v1/jobs/{job}/result"
    # A reviewer reads it too.
    assert client.get(f"/v1/jobs/{job}/result", headers=keys.reviewer.headers).json() == body


def test_coco_document(client: TestClient, keys: Keys, submit: Submit, sm: sessionmaker[Session]) -> None:
    job = submit()
    succeed_job(sm, job)
    r = client.get(f"/v1/jobs/{job}/coco", headers=keys.qa.headers)
    assert r.status_code == 200, r.text
    coco = r.json()
    assert {"images", "categories", "annotations"} <= coco.keys()
    assert coco["images"] == [{"id": job, "width": 48, "height": 32, "file_name": f"{job}.png", "frame_index": 0,
                               "frame_count": 1}]
    assert [c["id"] for c in coco["categories"]] == list(range(1, len(PROFILE.classes) + 1))
    assert [c["name"] for c in coco["categories"]] == PROFILE.classes
    annotations = coco["annotations"]
    assert [a["id"] for a in annotations] == [1, 2, 3, 4]
    assert {a["image_id"] for a in annotations} == {job}
    labels = ["NT", "NB", "head", "CRL_KP"]
    assert [a["category_id"] for a in annotations] == [category_id(label) for label in labels]
    names = {c["id"]: c["name"] for c in coco["categories"]}
    assert [names[a["category_id"]] for a in annotations] == labels
    det_a, det_b, seg, kps = annotations
    assert det_a["bbox"] == [1, 2, 10, 4] and det_a["area"] == 40 and det_a["score"] == 0.9
    assert det_b["score"] == 1.0  # no score: COCO results need one
    assert seg["segmentation"] == [[2, 2, 22, 2, 22, 22, 2, 22]] and seg["area"] == 400
    assert kps["keypoints"] == [5, 5, 2, 15, 15, 2] and kps["num_keypoints"] == 2
    assert all(a["iscrowd"] == 0 for a in annotations)


def test_result_while_awaiting_review(client: TestClient, keys: Keys, submit: Submit,
                                      sm: sessionmaker[Session]) -> None:
    job = submit(mode="hitl")
    succeed_job(sm, job, awaiting_review=True)
    body = client.get(f"/v1/jobs/{job}", headers=keys.submitter.headers).json()
    assert (body["status"], body["review_state"]) == ("awaiting_review", "pending")
    r = client.get(f"/v1/jobs/{job}/result", headers=keys.submitter.headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "awaiting_review"
    assert client.get(f"/v1/jobs/{job}/coco", headers=keys.submitter.headers).status_code == 200


def test_failed_job_shows_its_error(client: TestClient, keys: Keys, submit: Submit, sm: sessionmaker[Session]) -> None:
    job = submit()
    run_job(sm, job)
    with sm.begin() as session:
        assert fail(session, job, OWNER, "bad_image", "the stored image cannot be read")
    body = client.get(f"/v1/jobs/{job}", headers=keys.submitter.headers).json()
    assert body["status"] == "failed"
    assert body["attempts"] == 1
    assert body["error"] == {"code": "bad_image", "detail": "the stored image cannot be read"}
    problem = assert_problem(client.get(f"/v1/jobs/{job}/result", headers=keys.submitter.headers), 409,
                             "result_not_ready")
    assert problem["current_status"] == "failed"


# --- cancel -----------------------------------------------------------------------------------


def test_cancel_a_queued_job_then_again(client: TestClient, keys: Keys, submit: Submit,
                                        sm: sessionmaker[Session]) -> None:
    job = submit()
    first = client.post(f"/v1/jobs/{job}/cancel", headers=keys.submitter.headers)
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "canceled" and first.json()["id"] == job
    assert _status(sm, job) == "canceled"
    # The contract: queued or awaiting_review jobs become canceled, "409 otherwise"; a job that is
    # canceled already is no exception (it was 200 before commit bb3e9ef).
    again = assert_problem(client.post(f"/v1/jobs/{job}/cancel", headers=keys.submitter.headers), 409,
                           "invalid_transition")
    assert again["current_status"] == "canceled"
    assert _status(sm, job) == "canceled"
    assert_problem(client.get(f"/v1/jobs/{job}/result", headers=keys.submitter.headers), 409, "result_not_ready")


def test_cancel_while_awaiting_review(client: TestClient, keys: Keys, submit: Submit,
                                      sm: sessionmaker[Session]) -> None:
    job = submit(mode="hitl")
    succeed_job(sm, job, awaiting_review=True)
    r = client.post(f"/v1/jobs/{job}/cancel", headers=keys.submitter.headers)
    assert r.status_code == 200, r.text
    # Nobody reviews a canceled job, so it no longer waits for a review.
    assert (r.json()["status"], r.json()["review_state"]) == ("canceled", "not_required")
    assert _status(sm, job) == "canceled"
    # Its first-stage result stays readable, and says the job was canceled.
    r = client.get(f"/v1/jobs/{job}/result", headers=keys.submitter.headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "canceled"


@pytest.mark.parametrize("state", ["running", "succeeded", "failed"])
def test_cancel_in_a_state_that_does_not_allow_it_is_409(client: TestClient, keys: Keys, submit: Submit,
                                                         sm: sessionmaker[Session], state: str) -> None:
    job = submit()
    if state == "succeeded":
        succeed_job(sm, job)
    else:
        run_job(sm, job)
        if state == "failed":
            with sm.begin() as session:
                assert fail(session, job, OWNER, "boom", None)
    body = assert_problem(client.post(f"/v1/jobs/{job}/cancel", headers=keys.submitter.headers), 409,
                          "invalid_transition")
    assert body["current_status"] == state
    assert _status(sm, job) == state


def test_cancel_unknown_job_is_404(client: TestClient, keys: Keys) -> None:
    body = assert_problem(client.post(f"/v1/jobs/{UNKNOWN_ID}/cancel", headers=keys.admin.headers), 404,
                          "job_not_found")
    assert UNKNOWN_ID in body["detail"]


def test_cancel_is_post_only(client: TestClient, keys: Keys, submit: Submit) -> None:
    job = submit()
    assert_problem(client.get(f"/v1/jobs/{job}/cancel", headers=keys.submitter.headers), 405, "method_not_allowed")


def test_a_result_stored_without_its_frame_reads_the_frame_of_its_image(client: TestClient, keys: Keys,
                                                                        sm: sessionmaker[Session]) -> None:
    """Results stored by an older release have no frame: frame 3 of a cine must not read as 0."""
    cine = Path(str(get_testdata_file("examples_ybr_color.dcm"))).read_bytes()  # US multi-frame, 30 frames
    r = client.post("/v1/jobs", files=file_part(cine, "cine.dcm"), data={"frame": "3"}, headers=keys.submitter.headers)
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    stored = succeed_job(sm, job)  # a document without frame fields
    assert "frame_count" not in stored.image.model_dump(exclude_unset=True)
    image = client.get(f"/v1/jobs/{job}/result", headers=keys.submitter.headers).json()["image"]
    assert (image["frame"], image["frame_count"]) == (3, 30)
    [coco] = client.get(f"/v1/jobs/{job}/coco", headers=keys.submitter.headers).json()["images"]
    assert (coco["frame_index"], coco["frame_count"]) == (3, 30)
