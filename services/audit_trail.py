"""Reading the audit trail back: who did what to which job, newest first, for a privacy
officer's "who opened this result?" and "what did this key do last week?". The trail is
written by ``shared.audit`` for every /v1 and DICOMweb request; this only reads it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey, AuditEvent

from .jobs import decode_cursor, encode_cursor

MAX_LIMIT = 500


@dataclass(frozen=True)
class AuditFilters:
    """Each one set narrows the events; ``start`` inclusive, ``end`` exclusive (UTC)."""

    job_id: str | None = None
    api_key_id: str | None = None
    action: str | None = None
    outcome: str | None = None
    start: datetime | None = None
    end: datetime | None = None


@dataclass(frozen=True)
class AuditEntry:
    event: AuditEvent
    key: ApiKey | None  # None for a request without a known key (refused as unauthorized)


@dataclass(frozen=True)
class AuditPage:
    items: list[AuditEntry]
    next_cursor: str | None  # None on the last page


def list_events(session: Session, filters: AuditFilters, *, limit: int = 100, cursor: str | None = None) -> AuditPage:
    """Events newest first (``at``, then ``id``, descending); ``cursor`` is the previous page's
    ``next_cursor`` (``InvalidCursor`` when it does not decode)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    texts = (filters.job_id, filters.api_key_id, filters.action, filters.outcome)
    if any("\x00" in (value or "") for value in texts):
        # Nothing stored holds NUL, and PostgreSQL refuses to even compare with it.
        return AuditPage(items=[], next_cursor=None)
    stmt = select(AuditEvent, ApiKey).outerjoin(ApiKey, ApiKey.id == AuditEvent.api_key_id)
    if filters.job_id is not None:
        stmt = stmt.where(AuditEvent.job_id == filters.job_id)
    if filters.api_key_id is not None:
        stmt = stmt.where(AuditEvent.api_key_id == filters.api_key_id)
    if filters.action is not None:
        stmt = stmt.where(AuditEvent.action == filters.action)
    if filters.outcome is not None:
        stmt = stmt.where(AuditEvent.outcome == filters.outcome)
    if filters.start is not None:
        stmt = stmt.where(AuditEvent.at >= filters.start)
    if filters.end is not None:
        stmt = stmt.where(AuditEvent.at < filters.end)
    if cursor is not None:
        after_t, after_id = decode_cursor(cursor)
        stmt = stmt.where(or_(AuditEvent.at < after_t, and_(AuditEvent.at == after_t, AuditEvent.id < after_id)))
    rows = session.execute(stmt.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit + 1)).all()
    items = [AuditEntry(event=event, key=key) for event, key in rows[:limit]]
    last = items[-1].event if items else None
    next_cursor = encode_cursor(last.at, last.id) if last is not None and len(rows) > limit else None
    return AuditPage(items=items, next_cursor=next_cursor)
