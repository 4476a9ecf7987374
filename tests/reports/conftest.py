"""Fixtures for the report tests: the API tests' app, databases (PostgreSQL and SQLite, each
migrated once per session) and keys, taken from tests/api/conftest.py, plus a seeder that
writes jobs, results and reviews straight into the database (the review routes are built
elsewhere; the report reads only the tables)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from tests.api import conftest as api

from .helpers import Seeder

# The API tests' fixtures, re-exported under their names (pytest finds fixtures by attribute).
_postgres_migrated = api._postgres_migrated
_sqlite_template = api._sqlite_template
db_url = api.db_url
sqlite_db_url = api.sqlite_db_url
sm = api.sm
keys = api.keys
broker_url = api.broker_url
make_app = api.make_app
make_client = api.make_client
client = api.client
serve = api.serve


@pytest.fixture
def seeder(sm: sessionmaker[Session], keys: api.Keys) -> Seeder:
    return Seeder(sm, owner_key_id=keys.submitter.id)


@pytest.fixture
def sqlite_sm(sqlite_db_url: str) -> Iterator[sessionmaker[Session]]:
    yield from api.open_sessions(sqlite_db_url)


@pytest.fixture
def sqlite_keys(sqlite_sm: sessionmaker[Session]) -> api.Keys:
    return api.make_keys(sqlite_sm)


@pytest.fixture
def sqlite_seeder(sqlite_sm: sessionmaker[Session], sqlite_keys: api.Keys) -> Seeder:
    return Seeder(sqlite_sm, owner_key_id=sqlite_keys.submitter.id)


@pytest.fixture
def sqlite_app(sqlite_db_url: str, tmp_path: Path, broker_url: str) -> Iterator[FastAPI]:
    """An app on SQLite alone (for the tests that drive a real server: browser, CLI)."""
    app = create_app(api.make_settings(sqlite_db_url, tmp_path, broker_url))
    yield app
    api.close_app(app)
