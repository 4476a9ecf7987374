"""Recovery from the database, not the broker: jobs of dead workers and lost messages.

Run periodically (e.g. Celery beat, every few seconds), in its own transaction; the caller
commits, then enqueues ``requeue_ids``, and ``untouch``-es those it could not. Rows are picked
with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two sweepers (or a sweeper and a worker)
never wait on each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from shared.db.clock import db_now
from shared.db.models import Job, JobStatus

from ._common import failed_values
from .lifecycle import MAX_ATTEMPTS_CODE, TIME_LIMIT_CODE

_SYNC = {"synchronize_session": False}


@dataclass
class SweepReport:
    requeue_ids: list[str] = field(default_factory=list)  # enqueue these (after commit)
    failed_ids: list[str] = field(default_factory=list)
    touched_at: datetime | None = None  # the pass's time, written to the requeued jobs' updated_at
    # for each of requeue_ids, the updated_at that ``untouch`` puts back
    untouched: dict[str, datetime] = field(default_factory=dict)


def _locked(session: Session, *where: ColumnElement[bool], limit: int) -> dict[str, datetime]:
    """Ids of the matching jobs, locked, with their updated_at."""
    stmt = (select(Job.id, Job.updated_at).where(*where).order_by(Job.updated_at).limit(limit)
            .with_for_update(skip_locked=True))
    return {row.id: row.updated_at for row in session.execute(stmt)}


def sweep(
    session: Session,
    *,
    now: datetime | None = None,
    queued_grace_seconds: float,
    hard_time_limit_seconds: float,
    limit: int = 500,
) -> SweepReport:
    """One pass:

    1. running jobs started more than ``hard_time_limit_seconds`` ago -> failed ``time_limit``;
    2. running jobs whose lease expired -> queued (lease cleared) and reported for re-enqueue,
       or failed ``max_attempts`` when their attempts are used up;
    3. queued jobs whose message the broker refused (``unpublished``: at once) or looks lost
       (not touched for ``queued_grace_seconds``) are reported for re-enqueue, their mark
       cleared and ``updated_at`` touched, so a lost one is re-enqueued at most once per grace
       period (``untouch`` gives the touch back and marks the job where the message could not
       be published: the next pass tries again). Looks lost: no job was claimed within
       the grace period (the workers are idle or gone), or a job submitted after this one's
       last enqueue was (the broker hands messages out oldest first, so this one's should
       have come before it). A job merely waiting its turn behind a long backlog is left
       alone: re-enqueueing the whole backlog every grace period filled the broker with
       duplicates.

    At most ``limit`` rows per step; a later pass takes the rest.
    """
    now = now or db_now(session)
    report = SweepReport(touched_at=now)
    running = Job.status == JobStatus.running
    recent = now - timedelta(seconds=queued_grace_seconds)

    # 1. hard time limit (per attempt: started_at is set by each claim)
    cutoff = now - timedelta(seconds=hard_time_limit_seconds)
    ids = list(_locked(session, running, Job.started_at < cutoff, limit=limit))
    if ids:
        rows = session.execute(
            update(Job)
            .where(Job.id.in_(ids), running, Job.started_at < cutoff)
            .values(
                **failed_values(
                    now, TIME_LIMIT_CODE, f"still running after the hard time limit of {hard_time_limit_seconds:g} s"
                )
            )
            .returning(Job.id),
            execution_options=_SYNC,
        )
        report.failed_ids.extend(rows.scalars())

    # 2. expired leases: the worker died or lost its connection
    expired = (running, Job.lease_expires_at < now)
    locked = _locked(session, *expired, limit=limit)
    ids = list(locked)
    if ids:
        rows = session.execute(
            update(Job)
            .where(Job.id.in_(ids), *expired, Job.attempts < Job.max_attempts)
            .values(status=JobStatus.queued, lease_owner=None, lease_expires_at=None, updated_at=now,
                    waiting_since=now)
            .returning(Job.id),
            execution_options=_SYNC,
        )
        requeued = list(rows.scalars())
        report.requeue_ids.extend(requeued)
        # its message is as lost as a stale job's: untouched, it is stale for the next pass
        report.untouched.update({job_id: min(locked[job_id], recent) for job_id in requeued})
        rows = session.execute(
            update(Job)
            .where(Job.id.in_(ids), *expired, Job.attempts >= Job.max_attempts)
            .values(
                **failed_values(
                    now, MAX_ATTEMPTS_CODE, "the worker's lease expired on the last attempt (worker lost or stuck)"
                )
            )
            .returning(Job.id),
            execution_options=_SYNC,
        )
        report.failed_ids.extend(rows.scalars())

    # 3. queued jobs whose message the broker refused (``unpublished``) or looks lost
    looks_lost: tuple[ColumnElement[bool], ...] = (Job.updated_at < recent,)
    newest_taken = session.scalar(select(func.max(Job.created_at)).where(Job.started_at >= recent))
    if newest_taken is not None:  # the workers are taking messages: only those passed over
        looks_lost = (*looks_lost, Job.updated_at < newest_taken)
    unsent = (Job.status == JobStatus.queued, or_(Job.unpublished.is_(True), and_(*looks_lost)))
    locked = _locked(session, *unsent, limit=limit)
    if locked:
        rows = session.execute(
            update(Job).where(Job.id.in_(list(locked)), *unsent).values(updated_at=now, unpublished=False)
            .returning(Job.id),
            execution_options=_SYNC,
        )
        touched = list(rows.scalars())
        report.requeue_ids.extend(touched)
        report.untouched.update({job_id: locked[job_id] for job_id in touched})

    session.expire_all()
    return report


def untouch(session: Session, report: SweepReport, job_ids: Iterable[str]) -> None:
    """Give back the pass's touch of jobs whose message could not be published, and mark them
    ``unpublished``, so that the next pass re-enqueues them instead of one grace period later.
    Only where a job is still as the pass left it: one a worker took since (on an older
    message) is left alone."""
    for job_id in job_ids:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued, Job.updated_at == report.touched_at)
            .values(updated_at=report.untouched[job_id], unpublished=True),
            execution_options=_SYNC,
        )
