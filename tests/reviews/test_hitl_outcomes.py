"""What a HITL interpretation review decides beyond resume/finish: a rejected result is no
finding (no SR of it, none pushed to the PACS, its event says so, no annotation review of
it); a choice of phases that MAP would give nothing to run is refused as with a group."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.notify.outbox import collect_events
from shared.db.models import Delivery, DeliveryKind
from shared.schemas.results import Classification
from tests.api.helpers import assert_problem, ultrasound_dicom

from .conftest import Key, Keys
from .helpers import Jobs, first_stage_document

PACS = "http://pacs.test/dicom-web/studies"
HOOK = "https://ris.test/fada-events"


def _review(client: TestClient, key: Key, job_id: str, **fields: Any) -> Any:
    body = {"dimension": "interpretation", "score": 1, "decision": "accept", **fields}
    return client.post(f"/v1/jobs/{job_id}/reviews", json=body, headers=key.headers)


def _events(sm: sessionmaker[Session], job_id: str) -> dict[DeliveryKind, Delivery]:
    with sm.begin() as session:
        collect_events(session, pacs_stow_url=PACS, public_url="https://fada.test")
    with sm() as session:
        return {d.kind: d for d in session.scalars(select(Delivery).where(Delivery.job_id == job_id))}


def test_a_rejected_dicom_job_has_no_sr_pushes_none_and_says_so(client: TestClient, keys: Keys, jobs: Jobs,
                                                                sm: sessionmaker[Session]) -> None:
    job_id = jobs.awaiting(raw=ultrasound_dicom(), notify_to=HOOK)
    r = _review(client, keys.reviewer, job_id, score=3, decision="reject", comment="wrong plane")
    assert r.status_code == 201, r.text
    assert client.get(f"/v1/jobs/{job_id}", headers=keys.submitter.headers).json()["status"] == "succeeded"
    body = assert_problem(client.get(f"/v1/jobs/{job_id}/sr.dcm", headers=keys.submitter.headers), 409,
                          "result_rejected")
    assert "rejected the interpretation" in body["detail"]
    events = _events(sm, job_id)
    assert set(events) == {DeliveryKind.webhook}  # no SR of a rejected result goes to the PACS
    data = events[DeliveryKind.webhook].payload["data"]
    assert (data["status"], data["rejected_by_reviewer"]) == ("succeeded", True)
    assert "sr" not in data["links"] and "result" in data["links"]


def test_a_dicom_job_finished_with_no_phases_chosen_keeps_its_sr_and_push(client: TestClient, keys: Keys,
                                                                         jobs: Jobs,
                                                                         sm: sessionmaker[Session]) -> None:
    """The control: accepting the interpretation without later phases is a finding."""
    job_id = jobs.awaiting(raw=ultrasound_dicom(), notify_to=HOOK)
    assert _review(client, keys.reviewer, job_id, next_phases=[]).status_code == 201
    r = client.get(f"/v1/jobs/{job_id}/sr.dcm", headers=keys.submitter.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    events = _events(sm, job_id)
    assert set(events) == {DeliveryKind.webhook, DeliveryKind.pacs_sr}
    data = events[DeliveryKind.webhook].payload["data"]
    assert "rejected_by_reviewer" not in data and data["links"]["sr"].endswith("/sr.dcm")


@pytest.mark.parametrize(("gate", "why"), [({"score": 3, "decision": "reject"}, "(rejected)"),
                                           ({"next_phases": []}, "(no phases chosen)")])
def test_a_job_finished_without_later_phases_has_no_annotations_to_review(client: TestClient, keys: Keys,
                                                                         jobs: Jobs, gate: dict[str, Any],
                                                                         why: str) -> None:
    job_id = jobs.awaiting()
    assert _review(client, keys.reviewer, job_id, **gate).status_code == 201
    body = assert_problem(_review(client, keys.admin, job_id, dimension="annotation"), 409, "no_annotations")
    assert why in body["detail"] and body["current_status"] == "succeeded"
    assert [r["dimension"] for r in client.get(f"/v1/jobs/{job_id}/reviews", headers=keys.qa.headers)
            .json()["items"]] == ["interpretation"]


def _generic_first_stage() -> Any:
    """The model called the view "Other": MAP gives its generic boxes (detect) and nothing to segment."""
    doc = first_stage_document()
    doc.classification = Classification(label="Other")
    doc.interpretation = {field: "" for field in doc.interpretation or {}}
    return doc


@pytest.mark.parametrize("phases", [["segment"], ["keypoints"], ["keypoints", "segment"]])
def test_a_choice_of_phases_map_gives_nothing_to_run_is_refused(client: TestClient, keys: Keys, jobs: Jobs,
                                                                phases: list[str]) -> None:
    job_id = jobs.awaiting(_generic_first_stage())
    body = assert_problem(_review(client, keys.reviewer, job_id, next_phases=phases), 422, "invalid_review")
    assert f"next_phases {phases} would run nothing" in body["detail"] and "localises by detect" in body["detail"]
    assert client.get(f"/v1/jobs/{job_id}", headers=keys.qa.headers).json()["status"] == "awaiting_review"
    assert _review(client, keys.reviewer, job_id, next_phases=["detect", "segment"]).status_code == 201


def test_a_corrected_label_counts_when_checking_the_choice(client: TestClient, keys: Keys, jobs: Jobs) -> None:
    """The reviewer corrects "Other" to the BPD plane, which maps to Brain segmentation: asking
    for segment alone is then a choice that runs something, and the correction goes to the job."""
    job_id = jobs.awaiting(_generic_first_stage())
    r = _review(client, keys.reviewer, job_id, score=2, decision="correct", corrections={"label": "BPD_PLANE"},
                next_phases=["segment"])
    assert r.status_code == 201, r.text
    choice = jobs.job(job_id).hitl_choice
    assert choice is not None and (choice["label"], choice["decision"], choice["next_phases"]) == (
        "BPD_PLANE", "correct", ["segment"])
