"""Sending jobs' messages after their transaction commits, and marking the ones the broker
refused (``jobs.unpublished``) so that the sweeper's next pass sends them, instead of waiting
out ``queued_grace_seconds``: a Redis outage of a minute then delays those jobs by a minute."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Job, JobStatus

log = logging.getLogger(__name__)

Enqueue = Callable[[str], bool]  # publishes a job id; False when the broker refused it


def mark_queued_unpublished(session: Session) -> int:
    """Mark every queued job for the sweeper's next pass, as after a restore, whose broker's
    messages were not part of the backup. Returns how many."""
    marked = session.scalars(update(Job).where(Job.status == JobStatus.queued).values(unpublished=True)
                             .returning(Job.id), execution_options={"synchronize_session": False}).all()
    return len(marked)


def publish_jobs(sm: sessionmaker[Session], enqueue: Enqueue, job_ids: Sequence[str]) -> None:
    """Send the jobs' messages, after the commit; mark the queued ones the broker refused, so
    the sweeper's next pass sends them (a job a worker already took is not marked). Marking is
    a shortcut only: if the database fails here, the grace period still covers those jobs, and
    the caller still gets its answer."""
    refused = [job_id for job_id in job_ids if not enqueue(job_id)]
    if not refused:
        return
    try:
        with sm.begin() as session:
            session.execute(
                update(Job).where(Job.id.in_(refused), Job.status == JobStatus.queued).values(unpublished=True),
                execution_options={"synchronize_session": False},
            )
    except Exception as exc:
        log.warning("%d job(s) not enqueued and not marked for the sweeper (it sends them after "
                    "FADA_QUEUED_GRACE_SECONDS): %s", len(refused), exc)
