"""Fixtures for the database tests: ``postgres_url`` and ``sqlite_url`` (empty databases, see
tests/fixtures_db.py), and a migrated database of each kind shared by a module, each test
running in a transaction that is rolled back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from shared.db.engine import make_engine
from shared.db.migrate import upgrade
from tests.fixtures_db import postgres_url, sqlite_url, throwaway_postgres_database  # noqa: F401


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def migrated_engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An engine on a database migrated to head, one per backend and test module."""
    if request.param == "postgresql":
        with throwaway_postgres_database() as url:
            upgrade(url)
            engine = make_engine(url)
            yield engine
            engine.dispose()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'fada.db'}"
        upgrade(url)
        engine = make_engine(url)
        yield engine
        engine.dispose()


@pytest.fixture
def session(migrated_engine: Engine) -> Iterator[Session]:
    """A session whose commits are savepoints inside one transaction rolled back at the end."""
    with migrated_engine.connect() as conn:
        outer = conn.begin()
        s = Session(bind=conn, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield s
        finally:
            s.close()
            outer.rollback()
