"""``finish_hitl``: a HITL job the reviewer rejected (or gave no phases) is finished without a
worker; only a job awaiting review can be, once."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.jobs import REJECTED_DETAIL, finish_hitl
from shared.db.models import JobStatus

from .helpers import INTERPRETATION, Jobs

CHOICE: dict[str, Any] = {"next_phases": [], "group": None, "review_id": "r-1"}


def test_finish_hitl_ends_the_job_with_the_later_phases_skipped(sm: sessionmaker[Session], jobs: Jobs) -> None:
    job_id = jobs.awaiting()
    before = jobs.document(job_id)
    with sm.begin() as session:
        assert finish_hitl(session, job_id, CHOICE)
    job = jobs.job(job_id)
    assert job.status is JobStatus.succeeded and job.finished_at is not None
    assert job.hitl_choice == CHOICE
    doc = jobs.document(job_id)
    assert doc["status"] == "succeeded" and doc["job_id"] == job_id
    # (a set: PostgreSQL's JSONB does not keep the keys' order)
    assert set(doc["phases"]) == {"interpret", "classify", "map", "detect", "keypoints", "segment"}
    for phase in ("map", "detect", "keypoints", "segment"):
        assert doc["phases"][phase]["status"] == "skipped"
        assert doc["phases"][phase]["detail"] == REJECTED_DETAIL == "rejected by the reviewer"
    # what the first stage produced is kept as it was
    assert doc["interpretation"] == INTERPRETATION == before["interpretation"]
    assert doc["phases"]["interpret"] == before["phases"]["interpret"]
    assert doc["classification"] == before["classification"]
    assert doc["detections"] == [] and doc["mapping"] is None


def test_finish_hitl_takes_the_detail_and_happens_once(sm: sessionmaker[Session], jobs: Jobs) -> None:
    job_id = jobs.awaiting()
    with sm.begin() as session:
        assert finish_hitl(session, job_id, CHOICE, detail="no further phases chosen by the reviewer")
    with sm.begin() as session:  # a repeated call changes nothing
        assert not finish_hitl(session, job_id, {"next_phases": [], "group": None}, detail="other")
    assert jobs.job(job_id).hitl_choice == CHOICE
    assert jobs.document(job_id)["phases"]["detect"]["detail"] == "no further phases chosen by the reviewer"


def test_finish_hitl_refuses_jobs_not_awaiting_review(sm: sessionmaker[Session], jobs: Jobs) -> None:
    queued, succeeded = jobs.queued(), jobs.autonomous_succeeded()
    doc = jobs.document(succeeded)
    with sm.begin() as session:
        assert not finish_hitl(session, queued, CHOICE)
        assert not finish_hitl(session, succeeded, CHOICE)
    assert jobs.job(queued).status is JobStatus.queued and jobs.job(queued).hitl_choice is None
    assert jobs.document(succeeded) == doc
