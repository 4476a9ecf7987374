"""Telling a full database from one that cannot be reached (shared.db.outage), for the driver
errors the end-to-end tests cannot provoke here: PostgreSQL's disk_full needs a server whose
disk fills. SQLite's full database is provoked for real in tests/api/test_outages.py."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from shared.db.outage import database_full, database_unavailable


def _wrapped(driver_error: Exception) -> OperationalError:
    """What SQLAlchemy raises around a driver's error, raised and caught as in a request."""
    try:
        try:
            raise driver_error
        except Exception as exc:
            raise OperationalError("INSERT INTO images ...", {}, exc) from exc
    except OperationalError as wrapped:
        return wrapped


def test_postgres_disk_full_is_full_and_unavailable() -> None:
    error = _wrapped(psycopg.errors.DiskFull("could not extend file \"base/16384/16402\": No space left on device"))
    assert database_full(error) and database_unavailable(error)


def test_a_refused_connection_is_unavailable_not_full() -> None:
    error = _wrapped(psycopg.OperationalError("connection failed: Connection refused"))
    assert database_unavailable(error) and not database_full(error)


def test_sqlite_full_from_the_driver_itself() -> None:
    engine = create_engine("sqlite://")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (b BLOB)"))
            conn.execute(text("PRAGMA max_page_count = 1"))
            with pytest.raises(OperationalError) as caught:
                conn.execute(text("INSERT INTO t VALUES (zeroblob(100000))"))
    finally:
        engine.dispose()
    assert isinstance(caught.value.orig, sqlite3.OperationalError)
    assert database_full(caught.value) and database_unavailable(caught.value)


def test_a_locked_sqlite_database_is_unavailable_not_full() -> None:
    error = _wrapped(sqlite3.OperationalError("database is locked"))
    assert database_unavailable(error) and not database_full(error)
