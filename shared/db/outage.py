"""Telling a database that cannot be used right now from a request that is wrong.

A refused or dropped connection, a server shutting down or restarting, a pool with no free
connection, a SQLite file locked past the busy timeout: each is the database's state, not the
caller's error, and the same request may well succeed a few seconds later. The gateway
answers these with 503 and ``Retry-After`` (clients retry), instead of a 500 (they give up).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

POSTGRES_DISK_FULL = "53100"  # SQLSTATE disk_full (psycopg.errors.DiskFull)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the database could not be reached or used."""
    for current in _chain(exc):
        if isinstance(current, OperationalError | InterfaceError | PoolTimeout):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
    return False


def database_full(exc: BaseException) -> bool:
    """True when the database refused a write for want of disk space: SQLite's "database or
    disk is full", PostgreSQL's disk_full. Reads still work, so the service looks healthy while
    every submission fails; it lasts until an operator frees space, not a few seconds."""
    for current in _chain(exc):
        if getattr(current, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
        if getattr(current, "sqlstate", None) == POSTGRES_DISK_FULL:
            return True
    return False


def short_reason(exc: BaseException) -> str:
    """The error's class and first line, for a one-line log entry (no traceback per request)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]
