"""Fixtures: the API test fixtures (the real app over a migrated PostgreSQL and SQLite
database, a key per role), imported from tests/api, and a way to store finished jobs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import DecodedImage, decode_image
from services.jobs import claim, complete, submit_job
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
