"""Telling a database that cannot be used right now from a request that is wrong.

A refused or dropped connection, a server shutting down or restarting, a pool with no free
connection, a SQLite file locked past the busy timeout: each is the database's state, not the
caller's error, and the same request may well succeed a few seconds later. The gateway
answers these with 503 and ``Retry-After`` (clients retry), instead of a 500 (they give up).
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout


def database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) says the database could not be reached or used."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OperationalError | InterfaceError | PoolTimeout):
            return True
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        current = current.__cause__ or current.__context__
    return False


def short_reason(exc: BaseException) -> str:
    """The error's class and first line, for a one-line log entry (no traceback per request)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]
