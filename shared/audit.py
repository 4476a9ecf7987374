"""The audit trail: who (API key), what (action), which job, with what outcome."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from shared.db.clock import db_clock
from shared.db.models import AuditEvent
from shared.db.types import ID_LENGTH, new_id


def record_event(
    session: Session,
    *,
    action: str,
    outcome: str,
    api_key_id: str | None = None,
    job_id: str | None = None,
    detail: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> AuditEvent:
    """Add one audit event to ``session``; the caller commits. A ``job_id`` that cannot be one
    of ours (too long for the column, or holding NUL, which PostgreSQL refuses) is kept in
    ``detail`` as text instead, so the event is still written."""
    if job_id is not None and (len(job_id) > ID_LENGTH or "\x00" in job_id):
        detail = {**(detail or {}), "job_id_given": job_id[:64].replace("\x00", "\\0")}
        job_id = None
    event = AuditEvent(
        id=new_id(),
        at=db_clock(session),  # one clock for every gateway: the trail's order holds across hosts
        api_key_id=api_key_id,
        action=action[:64],
        job_id=job_id,
        outcome=outcome[:32],
        detail=detail,
        request_id=request_id,
    )
    session.add(event)
    return event
