"""Turning job status changes into deliveries (the outbox).

Jobs that asked for notifications carry ``notify = true`` from submission. Whatever changed
their status (worker, reviewer, sweeper, cancel), the dispatcher finds them here by
``status <> notified_status``, records the deliveries and the status it handled in one
transaction, and clears ``notify`` once the status is final. Rapid changes between two scans
coalesce: a receiver always learns the latest status, not necessarily every one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from services.jobs import rejected_by_reviewer
from shared.db.clock import db_now
from shared.db.models import FINAL_STATUSES, Delivery, DeliveryKind, Image, Job, JobStatus

# Running and queued are not announced: they change too often to be worth a request.
ANNOUNCED = (JobStatus.awaiting_review, JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)
SCAN_LIMIT = 200


def collect_events(session: Session, *, pacs_stow_url: str, public_url: str, now: datetime | None = None) -> int:
    """Record deliveries for every job whose announced status has not been handled yet.
    Returns how many deliveries were created."""
    query = (
        select(Job.id, Job.status, Job.notified_status, Job.webhook_url, Job.links_base, Job.batch_id,
               Job.hitl_choice, Image.dicom_sop_instance_uid)
        .join(Image, Image.id == Job.image_id)
        .where(Job.notify.is_(True), Job.status.in_(ANNOUNCED),
               or_(Job.notified_status.is_(None), Job.notified_status != Job.status))
        .order_by(Job.updated_at)
        .limit(SCAN_LIMIT)
        .with_for_update(of=Job, skip_locked=True)  # PostgreSQL: dispatchers take disjoint rows
    )
    rows = session.execute(query).all()
    # A job's deliveries go out in ``created_at`` order (dispatch.waits_its_turn), so it is the
    # database's clock (hosts' clocks drift apart), read after the scan: later than the commit
    # of the job's earlier delivery, which the scan had to see.
    now = now or db_now(session)
    created = 0
    for row in rows:
        status = JobStatus(row.status)
        if not _mark_handled(session, row.id, status, row.notified_status):
            continue  # another dispatcher handled it, or the status moved on: next scan
        # A result whose interpretation the reviewer rejected is no finding: no SR of it goes to
        # the PACS, and its event says so.
        rejected = status is JobStatus.succeeded and rejected_by_reviewer(row.hitl_choice)
        if row.webhook_url:
            # Links from FADA_PUBLIC_URL, else from where the job was submitted; relative only
            # for jobs submitted before the address was kept.
            base = public_url or row.links_base or ""
            payload = event_payload(row.id, status, row.batch_id, base, has_sr=bool(row.dicom_sop_instance_uid),
                                    now=now, rejected=rejected)
            session.add(Delivery(job_id=row.id, kind=DeliveryKind.webhook, event=f"job.{status.value}",
                                 url=row.webhook_url, payload=payload, next_attempt_at=now, created_at=now))
            created += 1
        if status is JobStatus.succeeded and pacs_stow_url and row.dicom_sop_instance_uid and not rejected:
            session.add(Delivery(job_id=row.id, kind=DeliveryKind.pacs_sr, event="result.sr", url=pacs_stow_url,
                                 payload={"job_id": row.id}, next_attempt_at=now, created_at=now))
            created += 1
    session.flush()
    return created


def _mark_handled(session: Session, job_id: str, status: JobStatus, seen: str | None) -> bool:
    """Conditional: only if the job still has the status we read and nobody handled it since."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == status,
               Job.notified_status.is_(None) if seen is None else Job.notified_status == seen)
        # updated_at kept: announcing a status changes nothing a caller sees (the column's
        # onupdate would stamp it, with this host's clock)
        .values(notified_status=status.value, notify=status not in FINAL_STATUSES, updated_at=Job.updated_at)
        .returning(Job.id)
    )
    return session.execute(stmt, execution_options={"synchronize_session": False}).first() is not None


def event_payload(job_id: str, status: JobStatus, batch_id: str | None, public_url: str, *, has_sr: bool,
                  now: datetime, rejected: bool = False) -> dict[str, Any]:
    """A thin event: ids, status and links, never patient data or results (the receiver
    fetches those with its own key). A job whose reviewer rejected the interpretation says
    ``rejected_by_reviewer`` and has no SR link (there is no SR of it)."""
    base = f"{public_url.rstrip('/')}/v1/jobs/{job_id}"
    links = {"job": base}
    if status in (JobStatus.succeeded, JobStatus.awaiting_review):
        links["result"] = f"{base}/result"
    if status is JobStatus.succeeded:
        links["coco"] = f"{base}/coco"
        if has_sr and not rejected:
            links["sr"] = f"{base}/sr.dcm"
    data: dict[str, Any] = {"job_id": job_id, "status": status.value, "batch_id": batch_id, "links": links}
    if rejected:
        data["rejected_by_reviewer"] = True
    return {"type": f"job.{status.value}", "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data}

