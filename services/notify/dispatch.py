"""The dispatcher: every worker's main process calls ``dispatch_once`` every
``notify_interval_seconds``. It records new events, claims due deliveries under a short
lease (so two dispatchers never send the same try), sends them, and logs each try. A job's
deliveries to one URL go out one after another, in the order they were made.

A failed try is retried after ``base * 4**(n-1)`` seconds (capped, with +-10 % jitter so a
receiver coming back is not hit by every retry at once), or after the receiver's
``Retry-After`` when that is longer, until ``notify_max_attempts`` is spent.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import httpx
from sqlalchemy import ColumnElement, and_, exists, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from shared.db.clock import db_now
from shared.db.models import ApiKey, Delivery, DeliveryAttempt, DeliveryKind, DeliveryStatus, Job
from shared.settings import Settings

from .outbox import collect_events
from .sealing import SecretBox, SecretUnavailable, secret_box
from .send import Attempt, DueDelivery, send

log = logging.getLogger(__name__)

CLAIM_LIMIT = 32
SENDERS = 4  # concurrent requests: one slow receiver must not hold up the others


@dataclass
class DispatchReport:
    created: int = 0
    delivered: list[str] = field(default_factory=list)
    retrying: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def dispatch_once(sm: sessionmaker[Session], settings: Settings, *, owner: str,
                  client: httpx.Client | None = None) -> DispatchReport:
    report = DispatchReport()
    with sm.begin() as session:
        report.created = collect_events(session, pacs_stow_url=settings.pacs_stow_url,
                                        public_url=settings.public_url)
    lease = timedelta(seconds=settings.notify_timeout_seconds * 3 + 5)
    with sm.begin() as session:
        now = db_now(session)
        due = claim_due(session, owner=owner, lease=lease, now=now)
    if not due:
        return report
    clock = stamp_clock(now)
    authorization = settings.pacs_authorization.get_secret_value() if settings.pacs_authorization else None
    try:
        box = secret_box(settings)
    except SecretUnavailable as exc:  # a damaged key file: each webhook try records why it failed
        box = SecretBox((), str(exc))
    own_client = client is None
    http = client or httpx.Client(timeout=settings.notify_timeout_seconds, follow_redirects=False)
    try:
        with ThreadPoolExecutor(max_workers=min(SENDERS, len(due))) as pool:
            attempts = list(pool.map(lambda d: send(d, http, sm, pacs_authorization=authorization, secrets=box,
                                                   allowed_hosts=settings.webhook_allowed_hosts, clock=clock), due))
    finally:
        if own_client:
            http.close()
    for delivery, attempt in zip(due, attempts, strict=True):
        with sm.begin() as session:
            status = record_attempt(session, delivery, attempt, owner=owner, settings=settings)
        {DeliveryStatus.delivered: report.delivered, DeliveryStatus.failed: report.failed,
         DeliveryStatus.pending: report.retrying}[status].append(delivery.id)
        if status is not DeliveryStatus.delivered:
            log.warning("delivery %s (%s of job %s) try %d: %s", delivery.id, delivery.kind.value,
                        delivery.job_id, delivery.attempts + 1, attempt.error)
    return report


def stamp_clock(now: datetime) -> Callable[[], int]:
    """Seconds by the database's clock, read once at the claim and carried on by this host's
    monotonic clock, for the webhooks' ``webhook-timestamp``: receivers refuse a stamp over 5
    minutes off theirs, and a worker's wall clock may drift. Sending a webhook then needs no
    database: one that is away mid-pass costs the pass its records, not its sends."""
    started = time.monotonic()
    return lambda: int(now.timestamp() + time.monotonic() - started)


def claim_due(session: Session, *, owner: str, lease: timedelta, now: datetime | None = None) -> list[DueDelivery]:
    """Pending deliveries whose time has come, whose lease (if any) has run out and whose turn
    it is (``waits_its_turn``), oldest due first: locked (SKIP LOCKED on PostgreSQL), leased
    in one UPDATE that re-checks the state (RETURNING says which rows were really taken), with
    their keys' secrets in one read."""
    now = now or db_now(session)
    free = and_(Delivery.status == DeliveryStatus.pending,
                or_(Delivery.lease_expires_at.is_(None), Delivery.lease_expires_at < now))
    candidates = session.scalars(
        select(Delivery.id)
        .where(free, Delivery.next_attempt_at <= now, ~waits_its_turn())
        .order_by(Delivery.next_attempt_at)
        .limit(CLAIM_LIMIT)
        .with_for_update(skip_locked=True)
    ).all()
    if not candidates:
        return []
    rows = session.execute(
        update(Delivery)
        .where(Delivery.id.in_(candidates), free)
        .values(lease_owner=owner, lease_expires_at=now + lease)
        .returning(Delivery.id, Delivery.job_id, Delivery.kind, Delivery.url, Delivery.payload, Delivery.attempts),
        execution_options={"synchronize_session": False},
    ).all()
    if not rows:
        return []
    secrets = {job_id: (current, previous if until is not None and until > now else None)
               for job_id, current, previous, until in session.execute(
                   select(Job.id, ApiKey.webhook_secret, ApiKey.previous_webhook_secret,
                          ApiKey.previous_webhook_secret_until).join(ApiKey, Job.api_key_id == ApiKey.id)
                   .where(Job.id.in_({row.job_id for row in rows})))}
    taken = {row.id: DueDelivery(row.id, row.job_id, DeliveryKind(row.kind), row.url, row.payload, row.attempts,
                                 *secrets.get(row.job_id, (None, None))) for row in rows}
    return [taken[delivery_id] for delivery_id in candidates if delivery_id in taken]  # RETURNING has no order


def waits_its_turn() -> ColumnElement[bool]:
    """An earlier delivery of the same job, kind and URL is still pending (not delivered, not
    failed for good). Each delivery has its own retry schedule, so without this a job's
    ``succeeded`` could overtake its ``awaiting_review`` stuck in backoff, and a receiver that
    keeps the last event would show a finished job as waiting. Once the earlier one is done,
    this one goes at the next pass (its own ``next_attempt_at`` has long come). The claim's
    UPDATE need not re-check it: no delivery becomes pending again, and no earlier one can
    appear (``collect_events`` stamps them by the database's clock)."""
    earlier = aliased(Delivery)
    return exists().where(
        earlier.job_id == Delivery.job_id, earlier.kind == Delivery.kind, earlier.url == Delivery.url,
        earlier.status == DeliveryStatus.pending,
        or_(earlier.created_at < Delivery.created_at,
            and_(earlier.created_at == Delivery.created_at, earlier.id < Delivery.id)))


def record_attempt(session: Session, delivery: DueDelivery, attempt: Attempt, *, owner: str, settings: Settings,
                   now: datetime | None = None) -> DeliveryStatus:
    """Log the try and move the delivery on: delivered, retried later, or failed for good."""
    now = now or db_now(session)
    number = delivery.attempts + 1
    session.add(DeliveryAttempt(delivery_id=delivery.id, attempt=number, at=now, status_code=attempt.status_code,
                                error=attempt.error, duration_ms=attempt.duration_ms))
    if attempt.ok:
        status, next_at = DeliveryStatus.delivered, now
    elif number >= settings.notify_max_attempts:
        status, next_at = DeliveryStatus.failed, now
    else:
        status, next_at = DeliveryStatus.pending, now + timedelta(seconds=retry_delay(number, attempt, settings))
    session.execute(
        update(Delivery)
        .where(Delivery.id == delivery.id, Delivery.lease_owner == owner)
        .values(status=status, attempts=number, next_attempt_at=next_at, lease_owner=None, lease_expires_at=None,
                last_status_code=attempt.status_code, last_error=attempt.error,
                delivered_at=now if attempt.ok else None),
        execution_options={"synchronize_session": False},
    )
    return status


def retry_delay(tries: int, attempt: Attempt, settings: Settings) -> float:
    backoff = settings.notify_retry_base_seconds * 4 ** (tries - 1) * random.uniform(0.9, 1.1)
    wanted = max(backoff, attempt.retry_after or 0.0)
    return min(wanted, settings.notify_retry_max_seconds)
