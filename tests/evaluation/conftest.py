"""Fixtures: the API test fixtures (the real app over a migrated PostgreSQL and SQLite
database, a key per role), imported from tests/api, and a way to store finished jobs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import DecodedImage, decode_image
from services.jobs import cancel, claim, complete, fail, finish_hitl, resume_hitl, submit_job
from shared.db.models import JobMode
from shared.schemas.results import ResultDocument
from tests.api.conftest import (  # noqa: F401  (fixtures, used by name)
    Keys,
    _postgres_migrated,
    _sqlite_template,
    broker_url,
    client,
    db_url,
    keys,
    make_app,
    make_client,
    sm,
)
from tests.api.helpers import png

from .builders import document

OWNER = "eval-test:1:gpu"


@pytest.fixture(scope="session")
def decoded() -> DecodedImage:
    return decode_image(png(0))


StoreJob = Callable[[ResultDocument | None], str]


@pytest.fixture
def store_job(sm: sessionmaker[Session], keys: Keys, decoded: DecodedImage) -> StoreJob:  # noqa: F811
    """``store_job(document)``: a job whose result is ``document`` (succeeded); with None, a
    job left queued (no result)."""

    def _store(document: ResultDocument | None) -> str:
        with sm.begin() as session:
            job_id = submit_job(session, decoded=decoded, original_size=100, api_key_id=keys.submitter.id).id
        if document is not None:
            with sm.begin() as session:
                assert claim(session, job_id, owner=OWNER, lease_seconds=60) is not None
                assert complete(session, job_id, OWNER, document)
        return job_id

    return _store


JobIn = Callable[[str], str]


@pytest.fixture
def job_in(sm: sessionmaker[Session], keys: Keys, decoded: DecodedImage) -> JobIn:  # noqa: F811
    """``job_in(state)``: a HITL job brought to ``state`` the way the service does it, its
    first-stage result (the view label, no detections) stored where the state has one:
    ``queued`` / ``failed`` / ``canceled`` (no result), ``awaiting_review``, ``resumed_queued``,
    ``resumed_running``, ``resumed_failed``, ``canceled_in_review`` (with a result), and
    ``rejected`` (succeeded, later phases skipped)."""

    def _job(state: str) -> str:
        with sm.begin() as session:
            job_id = submit_job(session, decoded=decoded, original_size=100, api_key_id=keys.submitter.id,
                                mode=JobMode.hitl).id
        if state == "queued":
            return job_id
        if state == "canceled":
            with sm.begin() as session:
                assert cancel(session, job_id)
            return job_id
        with sm.begin() as session:
            assert claim(session, job_id, owner=OWNER, lease_seconds=60) is not None
        if state == "failed":
            with sm.begin() as session:
                assert fail(session, job_id, OWNER, "boom", "failed in its first stage")
            return job_id
        with sm.begin() as session:  # complete() marks the document awaiting_review
            assert complete(session, job_id, OWNER, document(label="BPD_PLANE"), awaiting_review=True)
        if state == "awaiting_review":
            return job_id
        with sm.begin() as session:
            if state == "canceled_in_review":
                assert cancel(session, job_id)
            elif state == "rejected":
                assert finish_hitl(session, job_id, {"next_phases": [], "decision": "reject"})
            else:
                assert resume_hitl(session, job_id, {"next_phases": ["detect"], "decision": "accept"})
        if state in ("canceled_in_review", "rejected", "resumed_queued"):
            return job_id
        with sm.begin() as session:
            assert claim(session, job_id, owner=OWNER, lease_seconds=60) is not None
        if state == "resumed_failed":
            with sm.begin() as session:
                assert fail(session, job_id, OWNER, "boom", "failed in its second stage")
        else:
            assert state == "resumed_running", state
        return job_id

    return _job
