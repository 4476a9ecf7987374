"""Reading jobs: one job, its result, a filtered newest-first list with keyset pagination,
and a batch's counts per status."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from shared.db.models import Job, JobMode, JobStatus, Result, ReviewState

from .errors import InvalidCursor

MAX_LIMIT = 500


@dataclass(frozen=True)
class Page:
    items: list[Job]
    next_cursor: str | None  # None on the last page


_ID = re.compile(r"[0-9A-Za-z-]{1,64}")


def encode_cursor(created_at: datetime, job_id: str) -> str:
    raw = json.dumps({"t": created_at.isoformat(), "id": job_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        created_at = datetime.fromisoformat(data["t"])
        job_id = data["id"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise InvalidCursor(f"malformed cursor {cursor!r}") from exc
    # ids are this service's own (ASCII): anything else (a NUL, a lone surrogate) is not a cursor it made
    if not isinstance(job_id, str) or created_at.tzinfo is None or not _ID.fullmatch(job_id):
        raise InvalidCursor(f"malformed cursor {cursor!r}")
    try:
        created_at = created_at.astimezone(UTC)  # a time at the edge of the calendar overflows here
    except OverflowError as exc:
        raise InvalidCursor(f"malformed cursor {cursor!r}") from exc
    return created_at, job_id


def get_job(session: Session, job_id: str) -> Job | None:
    """The job, read fresh from the database."""
    return session.get(Job, job_id, populate_existing=True)


def get_result(session: Session, job_id: str) -> Result | None:
    return session.scalars(
        select(Result).where(Result.job_id == job_id).execution_options(populate_existing=True)
    ).first()


def list_jobs(
    session: Session,
    *,
    status: JobStatus | str | None = None,
    mode: JobMode | str | None = None,
    external_id: str | None = None,
    review_state: ReviewState | str | None = None,
    api_key_id: str | None = None,
    batch_id: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """Jobs newest first (``created_at``, then ``id``, descending). ``cursor`` is the previous
    page's ``next_cursor``; a cursor that does not decode raises ``InvalidCursor``."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
    if "\x00" in (external_id or "") + (batch_id or ""):
        # Nothing stored holds NUL, and PostgreSQL refuses to even compare with it.
        return Page(items=[], next_cursor=None)
    stmt = select(Job)
    if status is not None:
        stmt = stmt.where(Job.status == JobStatus(status))
    if mode is not None:
        stmt = stmt.where(Job.mode == JobMode(mode))
    if external_id is not None:
        stmt = stmt.where(Job.external_id == external_id)
    if review_state is not None:
        stmt = stmt.where(Job.review_state == ReviewState(review_state))
    if api_key_id is not None:
        stmt = stmt.where(Job.api_key_id == api_key_id)
    if batch_id is not None:
        stmt = stmt.where(Job.batch_id == batch_id)
    if cursor is not None:
        after_t, after_id = decode_cursor(cursor)
        stmt = stmt.where(or_(Job.created_at < after_t, and_(Job.created_at == after_t, Job.id < after_id)))
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    rows = list(session.scalars(stmt.execution_options(populate_existing=True)))
    items = rows[:limit]
    next_cursor = encode_cursor(items[-1].created_at, items[-1].id) if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


def batch_counts(session: Session, batch_id: str) -> dict[str, int]:
    """Number of the batch's jobs in each status (every status present, zeros included)."""
    counts = {s.value: 0 for s in JobStatus}
    rows = session.execute(select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status))
    for status, n in rows:
        counts[JobStatus(status).value] = n
    return counts


def status_counts(session: Session) -> dict[str, int]:
    """Number of jobs in each status, over all jobs (for metrics)."""
    counts = {s.value: 0 for s in JobStatus}
    for status, n in session.execute(select(Job.status, func.count()).group_by(Job.status)):
        counts[JobStatus(status).value] = n
    return counts
