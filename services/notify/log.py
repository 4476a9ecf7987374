"""Reading the delivery log of a job: every delivery with its tries, oldest first."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Delivery, DeliveryAttempt


def deliveries_of(session: Session, job_id: str) -> list[tuple[Delivery, list[DeliveryAttempt]]]:
    deliveries = list(session.scalars(
        select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.created_at, Delivery.id)))
    if not deliveries:
        return []
    tries: dict[str, list[DeliveryAttempt]] = {d.id: [] for d in deliveries}
    for attempt in session.scalars(select(DeliveryAttempt).where(DeliveryAttempt.delivery_id.in_(tries))
                                   .order_by(DeliveryAttempt.attempt)):
        tries[attempt.delivery_id].append(attempt)
    return [(d, tries[d.id]) for d in deliveries]
