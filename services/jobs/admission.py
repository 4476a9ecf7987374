"""Admission control: at most ``FADA_MAX_PENDING_PER_KEY`` jobs queued or running per API key,
so one batch script cannot bury a PACS bridge's studies under its backlog or fill the
database with pixels faster than the GPUs clear them. Jobs awaiting review do not count: they
wait for people, not for a GPU."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey, Job, JobStatus

from .errors import TooManyPending

PENDING = (JobStatus.queued, JobStatus.running)


def admit(session: Session, api_key_id: str, asked: int, limit: int | None, *, lock: bool = True) -> None:
    """Inside the submitting transaction: raises ``TooManyPending`` when ``asked`` more jobs
    would take the key past ``limit`` (the key's own or the service-wide one; None: no limit,
    nothing read). The key's row is locked before counting, so two submissions of one key are
    counted one after the other (PostgreSQL; SQLite transactions here begin IMMEDIATE, which
    serialises them anyway). ``lock=False``: an early look before the upload is decoded, to
    refuse cheaply; the locked check still decides."""
    if limit is None:
        return
    if asked > limit:
        raise TooManyPending(0, asked, limit)
    if lock:
        session.execute(select(ApiKey.id).where(ApiKey.id == api_key_id).with_for_update())
    pending = session.scalar(select(func.count()).select_from(Job)
                             .where(Job.api_key_id == api_key_id, Job.status.in_(PENDING))) or 0
    if pending + asked > limit:
        raise TooManyPending(pending, asked, limit)
