"""One clock for every host: the database server's.

Leases, time limits, grace periods, heartbeats and delivery retries are written on one host
and judged on another: a worker renews its lease, another host's sweeper expires it; the
gateway reads workers' heartbeats. Host clocks drift apart, and a sweeper whose clock runs a
minute ahead would take live jobs from their workers. So on PostgreSQL these times come from
the server (``clock_timestamp()``: the time of the call, not of the transaction's start).
SQLite is the embedded one-host default, where the host's clock is the only one.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ColumnElement, func, literal, select
from sqlalchemy.orm import Session

from .types import UTCDateTime, utcnow


def db_now(session: Session) -> datetime:
    """The current time (aware, UTC) by the clock every host of this database shares."""
    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    now = session.scalar(select(func.clock_timestamp()))
    if not isinstance(now, datetime) or now.tzinfo is None:  # timestamptz always comes back aware
        raise RuntimeError(f"clock_timestamp() gave {now!r}, not an aware datetime")
    return now.astimezone(UTC)


def db_clock(session: Session) -> ColumnElement[datetime]:
    """``db_now`` as a SQL expression, for a statement that reads or writes the time itself
    (the server evaluates it there: no extra round trip for a write on every request)."""
    if session.get_bind().dialect.name != "postgresql":
        return literal(utcnow(), UTCDateTime())
    return func.clock_timestamp()
