"""The result document callers read tells the job as it now is: a HITL job's first-stage
document, stored ``awaiting_review``, does not keep saying so once the job is resumed,
canceled or failed (PostgreSQL and SQLite)."""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import cancel, claim, current_document, release_for_retry, resume_hitl
from shared.db.models import Job, JobMode, JobStatus
from shared.schemas.results import ResultDocument

from .helpers import LATER, OWNER, WAITING, Jobs, full_document


def _document(sm: sessionmaker[Session], job_id: str) -> ResultDocument:
    with sm() as session:
        document = current_document(session, job_id)
    assert document is not None
    return document


def _later(document: ResultDocument) -> set[tuple[str, str | None]]:
    return {(document.phases[p].status, document.phases[p].detail) for p in LATER}


def test_a_first_stage_document_follows_its_job(sm: sessionmaker[Session], jobs: Jobs) -> None:
    job_id = jobs.awaiting()
    waiting = _document(sm, job_id)
    assert waiting.status == "awaiting_review" and _later(waiting) == {("skipped", WAITING)}

    with sm.begin() as session:
        assert resume_hitl(session, job_id, {"next_phases": ["detect"], "group": "brain"})
    queued = _document(sm, job_id)
    assert queued.status == "queued"
    assert _later(queued) == {("skipped", "not run yet: the reviewer chose the later phases and the job is queued")}
    # what the first stage found is told as it was
    assert (queued.phases["interpret"], queued.phases["classify"]) == (waiting.phases["interpret"],
                                                                        waiting.phases["classify"])
    assert queued.interpretation == waiting.interpretation and queued.classification == waiting.classification

    with sm.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(max_attempts=1))
        assert claim(session, job_id, owner=OWNER, lease_seconds=60) is not None
    assert _document(sm, job_id).status == "running"
    with sm.begin() as session:
        assert release_for_retry(session, job_id, OWNER, "worker lost") is JobStatus.failed
    failed = _document(sm, job_id)
    assert failed.status == "failed" and _later(failed) == {("skipped", "not run: the job failed (max_attempts)")}


def test_a_canceled_first_stage_says_so(sm: sessionmaker[Session], jobs: Jobs) -> None:
    job_id = jobs.awaiting()
    with sm.begin() as session:
        assert cancel(session, job_id)
    document = _document(sm, job_id)
    assert document.status == "canceled" and _later(document) == {("skipped", "not run: the job was canceled")}


def test_a_finished_document_is_read_as_stored(sm: sessionmaker[Session], jobs: Jobs) -> None:
    job_id = jobs.hitl_succeeded()
    stored = full_document()  # it names no frame: read with the image row's (one frame, the first)
    framed = stored.image.model_copy(update={"frame": 0, "frame_count": 1})
    assert _document(sm, job_id) == stored.model_copy(update={"job_id": job_id, "image": framed})
    with sm() as session:
        assert current_document(session, jobs.queued(JobMode.autonomous)) is None
