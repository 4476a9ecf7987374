"""``Idempotency-Key``: the same key and request give the original job or batch back; the
same key with another request is a conflict. Keys are scoped per API key."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared.db.clock import db_now
from shared.db.models import Batch, IdempotencyKey, Job, JobStatus
from shared.db.types import new_id

from .errors import IdempotencyConflict


def fingerprint(content: bytes, fields: dict[str, Any]) -> str:
    """SHA-256 (hex) over the uploaded bytes and the request's other fields (order-free)."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(content).digest())
    h.update(json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode())
    return h.hexdigest()


def _target(session: Session, row: IdempotencyKey) -> Job | Batch | None:
    if row.job_id is not None:
        return session.get(Job, row.job_id)
    if row.batch_id is not None:
        return session.get(Batch, row.batch_id)
    return None


def find_idempotent(session: Session, api_key_id: str, key: str, fingerprint: str) -> Job | Batch | None:
    """The job or batch stored under ``key`` for this API key, None when the key is new.
    Raises ``IdempotencyConflict`` when the key was used with another fingerprint."""
    row = session.scalars(
        select(IdempotencyKey).where(IdempotencyKey.api_key_id == api_key_id, IdempotencyKey.key == key)
    ).first()
    if row is None:
        return None
    if row.request_fingerprint != fingerprint:
        raise IdempotencyConflict(key)
    return _target(session, row)


def remember_idempotent(
    session: Session,
    api_key_id: str,
    key: str,
    fingerprint: str,
    *,
    job_id: str | None = None,
    batch_id: str | None = None,
    response_status: int = 202,
) -> Job | Batch | None:
    """Record ``key`` -> the new job or batch, in the caller's transaction (in a savepoint).

    Returns None when recorded. When a concurrent request stored the same key first (the
    UNIQUE constraint fires), returns ITS job or batch: the caller should roll back its own
    transaction and answer with that one. Raises ``IdempotencyConflict`` when that request had
    another fingerprint.
    """
    if (job_id is None) == (batch_id is None):
        raise ValueError("give exactly one of job_id and batch_id")
    row = IdempotencyKey(
        id=new_id(),
        api_key_id=api_key_id,
        key=key,
        request_fingerprint=fingerprint,
        job_id=job_id,
        batch_id=batch_id,
        response_status=response_status,
        created_at=db_now(session),
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        # Lost the race: the other insert has committed (PostgreSQL waited for it), read it.
        existing = find_idempotent(session, api_key_id, key, fingerprint)
        if existing is None:  # the constraint that fired was not the key's: not ours to hide
            raise
        return existing
    return None


def forget_if_ended_without_result(session: Session, api_key_id: str, key: str) -> bool:
    """Forget ``key`` when the job it names failed or was canceled, so that the same request
    makes a new job. For keys a sender cannot choose (STOW-RS derives one from the SOP
    Instance UID), sending again is its only way to retry. True when a key was forgotten."""
    ended = select(Job.id).where(Job.id == IdempotencyKey.job_id,
                                 Job.status.in_((JobStatus.failed, JobStatus.canceled))).exists()
    done = session.execute(delete(IdempotencyKey).where(
        IdempotencyKey.api_key_id == api_key_id, IdempotencyKey.key == key, ended))
    return bool(getattr(done, "rowcount", 0))
