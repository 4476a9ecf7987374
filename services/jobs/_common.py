"""Helpers shared by the modules of this package."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Session

from shared.db.models import Job, JobStatus, ReviewState

# The phases after the HITL gate, in document order (services.pipeline.runner.PHASE_ORDER).
LATER_PHASES = ("map", "detect", "keypoints", "segment")


def expire_job(session: Session, job_id: str) -> None:
    """Mark a Job already loaded in ``session`` stale after a bulk UPDATE, so the next
    attribute access reads the row again."""
    key = inspect(Job).identity_key_from_primary_key((job_id,))
    obj = session.identity_map.get(key)
    if obj is not None:
        session.expire(obj)


def failed_values(now: datetime, code: str, detail: str | None) -> dict[str, Any]:
    """Column values of a job that ends ``failed``: lease released, error recorded, and no
    review waited for: a failed job cannot be reviewed (a HITL job would otherwise stay
    ``pending`` forever, counted by every ``review_state=pending`` list yet in no queue)."""
    return {
        "status": JobStatus.failed,
        "review_state": ReviewState.not_required,
        "lease_owner": None,
        "lease_expires_at": None,
        "finished_at": now,
        "updated_at": now,
        "error_code": code,
        "error_detail": detail,
    }
