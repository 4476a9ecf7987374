"""Helpers shared by the modules of this package."""

from __future__ import annotations

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from shared.db.models import Job


def expire_job(session: Session, job_id: str) -> None:
    """Mark a Job already loaded in ``session`` stale after a bulk UPDATE, so the next
    attribute access reads the row again."""
    key = inspect(Job).identity_key_from_primary_key((job_id,))
    obj = session.identity_map.get(key)
    if obj is not None:
        session.expire(obj)
