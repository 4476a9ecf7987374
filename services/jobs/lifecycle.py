"""The job state machine: claim, renew, complete, fail, retry, cancel, resume.

Every change is one conditional UPDATE (``... WHERE id = :id AND status = :expected [AND
lease_owner = :me]``) whose returned rows say whether it happened, so a duplicate delivery
or a lost race is a no-op, never double work. Nothing here commits: the caller runs each
call in its own short transaction (``with sessionmaker.begin() as session: ...``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db.clock import db_now
from shared.db.models import Job, JobMode, JobStatus, Result, ReviewState
from shared.db.types import new_id
from shared.schemas.results import PhaseReport, ResultDocument

from ._common import LATER_PHASES, expire_job, failed_values
from .errors import InvalidTransition, JobNotFound

MAX_ATTEMPTS_CODE = "max_attempts"
TIME_LIMIT_CODE = "time_limit"
REJECTED_DETAIL = "rejected by the reviewer"
_SYNC = {"synchronize_session": False}


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs after a successful claim."""

    id: str
    owner: str
    attempts: int
    max_attempts: int
    mode: JobMode
    image_id: str
    lease_expires_at: datetime
    hitl_state: dict[str, Any] | None
    hitl_choice: dict[str, Any] | None

    @property
    def resuming(self) -> bool:
        """True for the second stage of a HITL job (the reviewer chose the next phases)."""
        return self.hitl_choice is not None


def _current_status(session: Session, job_id: str) -> JobStatus:
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status is None:
        raise JobNotFound(job_id)
    return JobStatus(status)


def _owned(job_id: str, owner: str) -> Any:
    return and_(Job.id == job_id, Job.status == JobStatus.running, Job.lease_owner == owner)


def _claimable(now: datetime) -> ColumnElement[bool]:
    """A job a worker may claim: queued, or running under a lease EXPIRED at ``now`` (its
    worker died) with attempts left."""
    return or_(
        Job.status == JobStatus.queued,
        and_(Job.status == JobStatus.running, Job.lease_expires_at < now, Job.attempts < Job.max_attempts),
    )


def _claim_stmt(where: ColumnElement[bool], *, owner: str, now: datetime, expires: datetime) -> Any:
    """The one UPDATE every claim runs: -> running under a lease for ``owner``, attempts + 1,
    returning what the worker needs. ``where`` must keep the status condition, so that a row
    another worker changed meanwhile is not taken."""
    return (
        update(Job)
        .where(where)
        .values(
            status=JobStatus.running,
            attempts=Job.attempts + 1,
            lease_owner=owner,
            lease_expires_at=expires,
            started_at=now,
            updated_at=now,
            unpublished=False,  # taken: whatever message was missing no longer matters
        )
        .returning(Job.id, Job.attempts, Job.max_attempts, Job.mode, Job.image_id, Job.hitl_state, Job.hitl_choice)
    )


def _claimed(row: Any, owner: str, expires: datetime) -> ClaimedJob:
    return ClaimedJob(
        id=row.id,
        owner=owner,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        mode=JobMode(row.mode),
        image_id=row.image_id,
        lease_expires_at=expires,
        hitl_state=row.hitl_state,
        hitl_choice=row.hitl_choice,
    )


def claim(
    session: Session, job_id: str, *, owner: str, lease_seconds: int, now: datetime | None = None
) -> ClaimedJob | None:
    """queued -> running under a lease for ``owner`` (attempts + 1). A running job whose lease
    has EXPIRED (its worker died) may be claimed again while attempts remain. Returns None,
    changing nothing, for any other state: finished, canceled, awaiting review, or running
    under a live lease."""
    now = now or db_now(session)
    expires = now + timedelta(seconds=lease_seconds)
    stmt = _claim_stmt(and_(Job.id == job_id, _claimable(now)), owner=owner, now=now, expires=expires)
    row = session.execute(stmt, execution_options=_SYNC).first()
    if row is None:
        return None
    expire_job(session, job_id)
    return _claimed(row, owner, expires)


def claim_ready(
    session: Session,
    *,
    owner: str,
    lease_seconds: int,
    limit: int,
    first: str | None = None,
    now: datetime | None = None,
) -> list[ClaimedJob]:
    """Claim a batch for one model run: ``first`` (the job whose message woke the worker; by
    the same rule as :func:`claim`) plus up to ``limit - 1`` other QUEUED jobs, oldest first.
    Without ``first``, up to ``limit`` queued jobs. ``first``, when claimed, comes first in the
    list. The slot of ``first`` is kept for it even when it is not claimable, so ``limit=1``
    is exactly :func:`claim`.

    The others are only queued jobs (a HITL job resumed after review is queued too): an
    expired lease is the sweeper's to requeue, after which any worker may take it. Candidates
    are locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent workers take
    disjoint sets without waiting on each other; SQLite ignores it but serialises writers
    (``BEGIN IMMEDIATE``). Either way the UPDATE re-checks ``status = queued`` and RETURNING
    says which rows were really taken.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    now = now or db_now(session)
    batch: list[ClaimedJob] = []
    if first is not None:
        head = claim(session, first, owner=owner, lease_seconds=lease_seconds, now=now)
        if head is not None:
            batch.append(head)
    others = limit - 1 if first is not None else limit
    if others > 0:
        batch.extend(_claim_queued(session, owner=owner, lease_seconds=lease_seconds, limit=others,
                                   exclude=first, now=now))
    return batch


def _claim_queued(
    session: Session, *, owner: str, lease_seconds: int, limit: int, exclude: str | None, now: datetime
) -> list[ClaimedJob]:
    """Up to ``limit`` queued jobs (never ``exclude``), oldest first (created_at, id)."""
    queued = Job.status == JobStatus.queued
    candidates = select(Job.id).where(queued).order_by(Job.created_at, Job.id).limit(limit)
    if exclude is not None:
        candidates = candidates.where(Job.id != exclude)
    ids = list(session.scalars(candidates.with_for_update(skip_locked=True)))
    if not ids:
        return []
    expires = now + timedelta(seconds=lease_seconds)
    rows = session.execute(_claim_stmt(and_(Job.id.in_(ids), queued), owner=owner, now=now, expires=expires),
                           execution_options=_SYNC).all()
    taken = {row.id: _claimed(row, owner, expires) for row in rows}
    for job_id in taken:
        expire_job(session, job_id)
    return [taken[job_id] for job_id in ids if job_id in taken]  # RETURNING has no order


def renew_leases(
    session: Session, job_ids: Collection[str], owner: str, lease_seconds: int, *, now: datetime | None = None
) -> set[str]:
    """Extend the leases of ``owner``'s running jobs in one statement; returns the ids renewed.
    A job missing from the answer is no longer ``owner``'s (stop working on it)."""
    if not job_ids:
        return set()
    now = now or db_now(session)
    stmt = (
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status == JobStatus.running, Job.lease_owner == owner)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
        .returning(Job.id)
    )
    renewed = set(session.execute(stmt, execution_options=_SYNC).scalars())
    for job_id in renewed:
        expire_job(session, job_id)
    return renewed


def renew_lease(session: Session, job_id: str, owner: str, lease_seconds: int, *, now: datetime | None = None) -> bool:
    """Extend the lease; False when ``owner`` no longer holds the running job (stop working)."""
    return job_id in renew_leases(session, [job_id], owner, lease_seconds, now=now)


def complete(
    session: Session,
    job_id: str,
    owner: str,
    document: ResultDocument,
    *,
    awaiting_review: bool = False,
    now: datetime | None = None,
) -> bool:
    """Store the result and finish the job in one transaction (a savepoint inside the
    caller's): running -> succeeded, or -> awaiting_review with ``hitl_state`` = the document
    (HITL first stage). Only the owner of the running job's lease may complete it; anything
    else (a second delivery, a stolen lease) returns False and changes nothing.

    One result per job: a HITL job resumed after review updates its result in place.
    """
    now = now or db_now(session)
    new_status = JobStatus.awaiting_review if awaiting_review else JobStatus.succeeded
    doc = document.model_copy(update={"job_id": job_id, "status": new_status.value})
    payload = _storable(doc.model_dump(mode="json"))
    model = doc.model
    values: dict[str, Any] = {
        "status": new_status,
        "lease_owner": None,
        "lease_expires_at": None,
        "updated_at": now,
        "model_revision": model.revision,
        "error_code": None,
        "error_detail": None,
    }
    if awaiting_review:
        values["hitl_state"] = payload
        values["waiting_since"] = now
    else:
        values["finished_at"] = now
    result_values: dict[str, Any] = {
        "document": payload,
        "model_base": model.base,
        "model_adapter": model.adapter,
        "model_revision": model.revision,
        "profile": model.profile,
        "untrained": model.untrained,
    }
    try:
        with session.begin_nested():
            changed = session.execute(
                update(Job).where(_owned(job_id, owner)).values(**values).returning(Job.id), execution_options=_SYNC
            ).first()
            if changed is None:
                return False  # leaving the block commits an empty savepoint
            existing = session.scalar(select(Result.id).where(Result.job_id == job_id))
            if existing is None:
                session.add(Result(id=new_id(), job_id=job_id, created_at=now, **result_values))
                session.flush()
            else:
                session.execute(
                    update(Result).where(Result.id == existing).values(**result_values), execution_options=_SYNC
                )
                result = session.get(Result, existing)
                if result is not None:
                    session.expire(result)
    except IntegrityError:
        return False  # another completion stored the result first
    expire_job(session, job_id)
    return True


def fail(
    session: Session, job_id: str, owner: str, code: str, detail: str | None, *, now: datetime | None = None
) -> bool:
    """running -> failed with an error code and detail; only by the lease owner."""
    now = now or db_now(session)
    stmt = update(Job).where(_owned(job_id, owner)).values(**failed_values(now, code, detail)).returning(Job.id)
    done = session.execute(stmt, execution_options=_SYNC).first() is not None
    if done:
        expire_job(session, job_id)
    return done


def release_for_retry(
    session: Session, job_id: str, owner: str, detail: str | None, *, now: datetime | None = None
) -> JobStatus | None:
    """After a transient error: running -> queued (lease cleared) while attempts remain, else
    -> failed with code ``max_attempts``. Returns the new status (re-enqueue when queued), or
    None when ``owner`` no longer holds the job."""
    now = now or db_now(session)
    requeued = session.execute(
        update(Job)
        .where(_owned(job_id, owner), Job.attempts < Job.max_attempts)
        .values(status=JobStatus.queued, lease_owner=None, lease_expires_at=None, updated_at=now,
                waiting_since=now)
        .returning(Job.id),
        execution_options=_SYNC,
    ).first()
    if requeued is not None:
        expire_job(session, job_id)
        return JobStatus.queued
    failed = session.execute(
        update(Job)
        .where(_owned(job_id, owner), Job.attempts >= Job.max_attempts)
        .values(
            **failed_values(
                now,
                MAX_ATTEMPTS_CODE,
                f"gave up after the last attempt: {detail}" if detail else "gave up after the last attempt",
            )
        )
        .returning(Job.id),
        execution_options=_SYNC,
    ).first()
    if failed is not None:
        expire_job(session, job_id)
        return JobStatus.failed
    return None


def cancel(session: Session, job_id: str, *, now: datetime | None = None) -> bool:
    """queued or awaiting_review -> canceled. Returns True when canceled now, False when it
    was canceled already (a repeated request). Raises ``InvalidTransition`` (409) for any other
    status, ``JobNotFound`` when there is no such job. A worker holding a message for the job
    finds it canceled at claim time and drops it."""
    now = now or db_now(session)
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.queued, JobStatus.awaiting_review]))
        # nobody reviews a canceled job, so it no longer waits for one
        .values(status=JobStatus.canceled, finished_at=now, updated_at=now, lease_owner=None, lease_expires_at=None,
                review_state=ReviewState.not_required)
        .returning(Job.id)
    )
    if session.execute(stmt, execution_options=_SYNC).first() is not None:
        expire_job(session, job_id)
        return True
    current = _current_status(session, job_id)
    if current is JobStatus.canceled:
        return False
    raise InvalidTransition(job_id, current.value, "cancel")


def rejected_by_reviewer(choice: dict[str, Any] | None) -> bool:
    """True when a HITL job's reviewer rejected its interpretation (the job then ends
    ``succeeded`` without later phases, but its result is no finding to store or announce as
    one). ``choice`` is the job's ``hitl_choice``, which keeps the gate review's decision
    (migration 0010 added it to choices saved before)."""
    return choice is not None and choice.get("decision") == "reject"


def resume_hitl(session: Session, job_id: str, choice: dict[str, Any], *, now: datetime | None = None) -> bool:
    """awaiting_review -> queued with the reviewer's ``choice`` (next phases, group) saved; the
    caller commits, then enqueues the id. The second stage gets a fresh attempt budget
    (attempts reset to 0). False when the job is not awaiting review (e.g. a repeated call)."""
    now = now or db_now(session)
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.awaiting_review)
        .values(status=JobStatus.queued, hitl_choice=choice, attempts=0, updated_at=now, waiting_since=now)
        .returning(Job.id)
    )
    done = session.execute(stmt, execution_options=_SYNC).first() is not None
    if done:
        expire_job(session, job_id)
    return done


def finish_hitl(session: Session, job_id: str, choice: dict[str, Any], *, detail: str = REJECTED_DETAIL,
                now: datetime | None = None) -> bool:
    """awaiting_review -> succeeded WITHOUT later phases: the reviewer rejected the
    interpretation (or chose no phases). No worker runs: the result document becomes
    ``succeeded`` with map/detect/keypoints/segment ``skipped`` and ``detail`` saying why, and
    ``choice`` is kept in ``hitl_choice``. False, changing nothing, when the job is not
    awaiting review (e.g. another reviewer's choice came first)."""
    now = now or db_now(session)
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.awaiting_review)
        .values(status=JobStatus.succeeded, hitl_choice=choice, finished_at=now, updated_at=now)
        .returning(Job.id)
    )
    if session.execute(stmt, execution_options=_SYNC).first() is None:
        return False
    expire_job(session, job_id)
    result = session.scalars(
        select(Result).where(Result.job_id == job_id).execution_options(populate_existing=True)
    ).first()
    if result is not None:  # always there for a job that awaited review; tolerate its absence
        doc = ResultDocument.model_validate(result.document)
        kept = {name: report for name, report in doc.phases.items() if name not in LATER_PHASES}
        skipped = {name: PhaseReport(status="skipped", detail=detail) for name in LATER_PHASES}
        doc = doc.model_copy(update={"status": JobStatus.succeeded.value, "phases": {**kept, **skipped}})
        session.execute(update(Result).where(Result.id == result.id).values(document=doc.model_dump(mode="json")),
                        execution_options=_SYNC)
        session.expire(result)
    return True


def _storable(value: Any) -> Any:
    """The document with every U+0000 replaced by U+FFFD: PostgreSQL's JSONB cannot hold that
    character, and a model's raw text may contain it (the same result must store on both
    databases, and never fail its job)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value
