"""What the service's metrics say about its work, read from the database at scrape time (the
gateway cannot see the workers' processes): how many jobs are in each state, how long the
oldest have waited, whether messages or notifications are stuck, how many workers live, and
when the API keys that still count run out.

These are the figures an operator alerts on: a queue whose oldest job keeps ageing while
workers are live means the GPUs are too few or stuck; a failed SR push means a result the PACS
never got; a PACS bridge's key that expires unnoticed stops the site's submissions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.clock import db_now
from shared.db.models import ApiKey, Delivery, DeliveryKind, DeliveryStatus, Job, JobStatus, Role

from .jobs import status_counts
from .workers import live_workers

# The states a job waits in: for a worker (queued) or for a sonographer (awaiting_review).
WAITING = (JobStatus.queued, JobStatus.awaiting_review)
# Delivered rows only grow; these two are the ones to watch, and their index keeps the counts cheap.
WATCHED_DELIVERIES = (DeliveryStatus.pending, DeliveryStatus.failed)


@dataclass(frozen=True)
class Figures:
    jobs: dict[str, int]  # per status, every status present
    oldest_waiting_seconds: dict[str, float]  # per WAITING status: since the oldest began to wait; 0 if none
    unpublished: int  # queued jobs whose broker message was refused, for the sweeper to send
    workers_live: int
    deliveries: dict[tuple[str, str], int]  # (kind, status) for WATCHED_DELIVERIES, zeros included
    oldest_pending_delivery_seconds: dict[str, float]  # per kind: since the event; 0 if none
    key_expiry: list[KeyExpiry]


@dataclass(frozen=True)
class KeyExpiry:
    """An unrevoked key with an expiry: how long it still works (negative once it has expired:
    it stays listed until revoked, so a key that ran out in use is not silently forgotten)."""

    key_prefix: str
    name: str
    role: str
    expires_in_seconds: float


def read_figures(session: Session, *, heartbeat_within_seconds: float) -> Figures:
    now = db_now(session)
    oldest_job = dict(session.execute(
        select(Job.status, func.min(Job.waiting_since)).where(Job.status.in_(WAITING)).group_by(Job.status)).all())
    deliveries = {(kind.value, status.value): 0 for kind in DeliveryKind for status in WATCHED_DELIVERIES}
    for kind, status, n in session.execute(
            select(Delivery.kind, Delivery.status, func.count())
            .where(Delivery.status.in_(WATCHED_DELIVERIES)).group_by(Delivery.kind, Delivery.status)):
        deliveries[(DeliveryKind(kind).value, DeliveryStatus(status).value)] = n
    oldest_delivery = dict(session.execute(
        select(Delivery.kind, func.min(Delivery.created_at))
        .where(Delivery.status == DeliveryStatus.pending).group_by(Delivery.kind)).all())
    unpublished = session.scalar(
        select(func.count()).select_from(Job).where(Job.unpublished, Job.status == JobStatus.queued)) or 0
    return Figures(
        jobs=status_counts(session),
        oldest_waiting_seconds={s.value: _age(now, oldest_job.get(s)) for s in WAITING},
        unpublished=unpublished,
        workers_live=len(live_workers(session, within_seconds=heartbeat_within_seconds)),
        deliveries=deliveries,
        oldest_pending_delivery_seconds={k.value: _age(now, oldest_delivery.get(k)) for k in DeliveryKind},
        key_expiry=_key_expiry(session, now),
    )


def _key_expiry(session: Session, now: datetime) -> list[KeyExpiry]:
    rows = session.execute(select(ApiKey.key_prefix, ApiKey.name, ApiKey.role, ApiKey.expires_at)
                           .where(ApiKey.revoked_at.is_(None), ApiKey.expires_at.is_not(None))
                           .order_by(ApiKey.expires_at))
    return [KeyExpiry(prefix, name, Role(role).value, (expires - now).total_seconds())
            for prefix, name, role, expires in rows if expires is not None]


def _age(now: datetime, since: datetime | None) -> float:
    if since is None:
        return 0.0
    return max(0.0, (now - since).total_seconds())
