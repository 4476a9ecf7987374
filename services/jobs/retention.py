"""Image retention: delete the pixels of jobs finished long ago, keep everything else.

A stored image is needed while its job may still run: queued, running, awaiting review (the
HITL second stage reads it again). Once the job has finished (succeeded, failed, canceled)
nothing reads the pixels: results, COCO, the DICOM SR, reviews, reports and evaluations use the
result document and the image row's sizes, sha256 and UIDs. Keeping ultrasound frames of
patients for ever is what a hospital's data-protection officer asks a service not to do, so
``FADA_IMAGE_RETENTION_DAYS`` deletes them that many days after the job finished (the worker
run it every few minutes; ``fada images purge`` runs it by hand). ``images.data`` becomes NULL and
``purged_at`` says when; the row stays.

PostgreSQL reuses the freed space after its (auto)vacuum; the file shrinks only with
``VACUUM FULL``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, exists, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.audit import record_event
from shared.db.clock import db_now
from shared.db.models import FINAL_STATUSES, Image, Job

BATCH = 500
ONE_DAY = timedelta(days=1)


def purgeable(older_than: timedelta, now: datetime) -> ColumnElement[bool]:
    """Images still holding pixels whose job finished before ``now - older_than``."""
    cutoff = now - older_than
    return and_(Image.data.is_not(None), exists().where(
        Job.image_id == Image.id, Job.status.in_(FINAL_STATUSES), Job.finished_at < cutoff))


def count_purgeable(session: Session, *, older_than: timedelta, now: datetime | None = None) -> int:
    return int(session.scalar(select(func.count()).select_from(Image)
                              .where(purgeable(older_than, now or db_now(session)))) or 0)


def purge_images(session: Session, *, older_than: timedelta, now: datetime | None = None,
                 limit: int = BATCH) -> list[str]:
    """Delete the pixels of at most ``limit`` images whose job finished more than
    ``older_than`` ago; returns their ids. The update checks again, so of two workers purging
    at once each returns only the images it purged. Run it again for the rest."""
    now = now or db_now(session)
    ids = list(session.scalars(select(Image.id).where(purgeable(older_than, now)).order_by(Image.created_at)
                               .limit(limit)))
    if not ids:
        return []
    purged = session.execute(update(Image).where(Image.id.in_(ids), purgeable(older_than, now))
                             .values(data=None, purged_at=now).returning(Image.id),
                             execution_options={"synchronize_session": False})
    return list(purged.scalars())


def purge_all(sm: sessionmaker[Session], *, older_than: timedelta, by: str, now: datetime | None = None,
              batch: int = BATCH) -> int:
    """Purge until nothing is left, ``batch`` images per transaction (a first run over a long
    backlog holds no huge transaction); returns how many images lost their pixels. Each batch
    that deletes any is an audit event ("images purge") in its own transaction, ``by`` naming
    who ran it (the worker's name, or user@host for the command): deleting patients' images
    must be accountable."""
    total = 0
    while True:
        with sm.begin() as session:
            now = now or db_now(session)  # one cutoff for the whole pass
            purged = len(purge_images(session, older_than=older_than, now=now, limit=batch))
            if purged:
                record_event(session, action="images purge", outcome="ok",
                             detail={"client": by[:64], "images": purged, "older_than_days": older_than / ONE_DAY,
                                     "finished_before": (now - older_than).isoformat()})
        total += purged
        if purged < batch:
            return total
