"""Fixtures for the job state machine tests: every test runs on PostgreSQL and on SQLite
(``db_url``), against a schema migrated to head."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import DecodedImage, decode_image
from services.jobs import submit_job
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import upgrade
from shared.db.models import ApiKey, Job, Role
from shared.db.types import new_id
from tests.fixtures_db import postgres_url, sqlite_url  # noqa: F401

from .helpers import png_bytes


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> str:
    name = "postgres_url" if request.param == "postgresql" else "sqlite_url"
    url: str = request.getfixturevalue(name)
    upgrade(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sm(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def api_key_id(sm: sessionmaker[Session]) -> str:
    key_id = new_id()
    with sm.begin() as s:
        s.add(ApiKey(id=key_id, name="test", role=Role.submitter, key_prefix="fada_t", key_hash=new_id()))
    return key_id


@pytest.fixture(scope="session")
def decoded() -> DecodedImage:
    return decode_image(png_bytes())


@pytest.fixture
def submit(sm: sessionmaker[Session], api_key_id: str, decoded: DecodedImage) -> Callable[..., str]:
    """Submit a job in its own committed transaction; returns its id."""

    def _submit(**kwargs: Any) -> str:
        with sm.begin() as s:
            job: Job = submit_job(s, decoded=decoded, original_size=123, api_key_id=api_key_id, **kwargs)
            return job.id

    return _submit
