"""Database fixtures for any test package: a throwaway PostgreSQL database per test, and a
SQLite file URL.

Use from a conftest.py:  ``from tests.fixtures_db import postgres_url, sqlite_url  # noqa: F401``

PostgreSQL: ``FADA_TEST_POSTGRES_URL`` is an ADMIN connection (default
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``); each test gets its own database
``fada_test_<random>``, created from it and dropped afterwards, so tests never collide with
each other or with anything else on the server. When the server cannot be reached, the test
FAILS under CI (``CI=true``) and is skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
from sqlalchemy import create_engine, make_url
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def admin_url() -> URL:
    return make_url(os.environ.get("FADA_TEST_POSTGRES_URL") or DEFAULT_ADMIN_URL)


def peer_unavailable(message: str, *, hint: str = "") -> NoReturn:
    """A peer the test needs (PostgreSQL, Redis, Orthanc, Chromium) is missing: FAIL under CI
    (``CI=true``), where it must never pass silently; skip with the reason elsewhere."""
    if in_ci():
        pytest.fail(message + " (CI=true: it is required)", pytrace=False)
    pytest.skip(message + (f" ({hint})" if hint else ""))


def postgres_unavailable(reason: str) -> NoReturn:
    peer_unavailable(f"PostgreSQL not reachable at {admin_url().render_as_string(hide_password=True)}: {reason}",
                     hint="set FADA_TEST_POSTGRES_URL, or start the server")


@contextmanager
def throwaway_postgres_database(prefix: str = "fada_test_") -> Iterator[str]:
    """Create an empty database, yield its URL (password included), drop it afterwards."""
    admin = create_engine(
        admin_url(), isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 5}
    )
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as exc:
        admin.dispose()
        postgres_unavailable(str(exc.orig or exc).strip().splitlines()[0])
    try:
        yield admin_url().set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            # FORCE (PostgreSQL 13+) ends sessions a failed test left open.
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database that lives for one test."""
    with throwaway_postgres_database() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a SQLite file (not yet created) in the test's temporary folder."""
    return f"sqlite:///{tmp_path / 'fada.db'}"


@contextmanager
def connections_refused(url: str) -> Iterator[None]:
    """New connections to the database are refused and open ones are ended, as while a server
    restarts; afterwards it takes connections again."""
    name = make_url(url).database
    admin = create_engine(admin_url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            conn.exec_driver_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        yield
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        admin.dispose()
