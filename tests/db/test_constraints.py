"""The database itself, PostgreSQL and SQLite alike, refuses what the models forbid."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from shared.db.models import (
    ApiKey,
    AuditEvent,
    IdempotencyKey,
    Image,
    ImageFormat,
    Job,
    JobMode,
    JobStatus,
    Result,
    Review,
    ReviewDecision,
    ReviewDimension,
    ReviewRevision,
    ReviewState,
    Role,
)


def _key(s: Session, name: str = "bridge", role: Role = Role.submitter) -> ApiKey:
    key = ApiKey(name=name, role=role, key_prefix="fada_abc", key_hash=hashlib.sha256(name.encode()).hexdigest())
    s.add(key)
    s.flush()
    return key


def _job(s: Session, key: ApiKey, **kw: object) -> Job:
    image = Image(sha256="0" * 64, format=ImageFormat.png, width=4, height=3, data=b"\x89PNG", original_size_bytes=10)
    s.add(image)
    s.flush()
    job = Job(image_id=image.id, api_key_id=key.id, **kw)
    s.add(job)
    s.flush()
    return job


def _result(job: Job) -> Result:
    return Result(
        job_id=job.id,
        document={"job_id": job.id},
        model_base="tiny",
        model_adapter=None,
        model_revision="rev1",
        profile="fada-skd",
        untrained=True,
    )


def _review(job: Job, key: ApiKey, score: int = 1) -> Review:
    return Review(
        job_id=job.id,
        reviewer_key_id=key.id,
        dimension=ReviewDimension.interpretation,
        score=score,
        decision=ReviewDecision.accept,
        job_mode=JobMode.autonomous,
    )


def test_one_result_per_job(session: Session) -> None:
    job = _job(session, _key(session))
    session.add(_result(job))
    session.flush()
    session.add(_result(job))
    with pytest.raises(IntegrityError):
        session.flush()


@pytest.mark.parametrize("score", [-1, 4])
def test_review_score_out_of_range(session: Session, score: int) -> None:
    key = _key(session)
    session.add(_review(_job(session, key), _key(session, "rev", Role.reviewer), score=score))
    with pytest.raises(IntegrityError):
        session.flush()


def test_one_current_review_per_reviewer_and_dimension(session: Session) -> None:
    job = _job(session, _key(session))
    reviewer, other = _key(session, "r1", Role.reviewer), _key(session, "r2", Role.reviewer)
    session.add_all([_review(job, reviewer), _review(job, other)])
    session.flush()
    session.add(_review(job, reviewer))
    with pytest.raises(IntegrityError):
        session.flush()


def test_review_amendment_keeps_history(session: Session) -> None:
    job = _job(session, _key(session))
    review = _review(job, _key(session, "r1", Role.reviewer), score=2)
    session.add(review)
    session.flush()
    session.add(
        ReviewRevision(
            review_id=review.id,
            revision=review.revision,
            score=review.score,
            decision=review.decision,
            created_at=review.created_at,
        )
    )
    review.score, review.revision, review.amended_at = 1, 2, datetime.now(UTC)
    session.commit()
    session.expire_all()
    got = session.get_one(Review, review.id)
    assert (got.score, got.revision, [h.score for h in got.history]) == (1, 2, [2])


@pytest.mark.parametrize(
    ("column", "value"),
    [("status", "done"), ("mode", "manual"), ("review_state", "maybe")],
)
def test_bad_job_values_refused_by_the_database(session: Session, column: str, value: str) -> None:
    job = _job(session, _key(session))
    # Raw SQL on purpose: the ORM would refuse the value before the database sees it.
    with pytest.raises(IntegrityError):
        session.execute(text(f"UPDATE jobs SET {column} = :v WHERE id = :id"), {"v": value, "id": job.id})


def test_bad_role_refused_by_the_database(session: Session) -> None:
    with pytest.raises(IntegrityError):
        session.execute(
            text(
                "INSERT INTO api_keys (id, name, role, key_prefix, key_hash, created_at) "
                "VALUES ('k', 'n', 'root', 'p', 'h', :t)"
            ),
            {"t": datetime.now(UTC)},
        )


def test_idempotency_key_unique_per_api_key(session: Session) -> None:
    a, b = _key(session, "a"), _key(session, "b")
    job = _job(session, a)
    for key in (a, b):  # the same key string under two API keys is fine
        session.add(
            IdempotencyKey(
                api_key_id=key.id, key="req-1", request_fingerprint="f" * 64, job_id=job.id, response_status=202
            )
        )
    session.flush()
    session.add(
        IdempotencyKey(api_key_id=a.id, key="req-1", request_fingerprint="e" * 64, job_id=job.id, response_status=202)
    )
    with pytest.raises(IntegrityError):
        session.flush()


def test_foreign_keys_enforced(session: Session) -> None:
    session.add(_result(Job(id="no-such-job")))
    with pytest.raises(IntegrityError):
        session.flush()


def test_values_round_trip(session: Session) -> None:
    key = _key(session)
    job = _job(session, key, mode=JobMode.hitl, review_state=ReviewState.pending, external_id="ACC-1")
    job.lease_expires_at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC) + timedelta(microseconds=7)
    job.hitl_state = {"phases": {"interpret": {"status": "ok"}}, "ü": [1, 2.5, None]}
    session.add(AuditEvent(action="jobs.create", outcome="202", job_id=job.id, detail=None))
    session.commit()
    session.expunge_all()  # read everything back from the database

    got = session.get_one(Job, job.id)
    assert got is not job
    assert (got.status, got.mode, got.review_state, got.attempts) == (
        JobStatus.queued,
        JobMode.hitl,
        ReviewState.pending,
        0,
    )
    assert got.lease_expires_at == job.lease_expires_at
    assert got.lease_expires_at is not None and got.lease_expires_at.tzinfo is not None
    assert got.created_at.tzinfo is not None and got.hitl_choice is None
    assert got.hitl_state == job.hitl_state
    assert got.image.data == b"\x89PNG"
    # JSON None is SQL NULL, so IS NULL finds it.
    assert session.scalar(select(AuditEvent.id).where(AuditEvent.detail.is_(None))) is not None
    assert session.scalar(select(Job.id).where(Job.status == "queued")) == job.id


def test_naive_datetime_refused(session: Session) -> None:
    job = _job(session, _key(session))
    job.started_at = datetime(2030, 1, 1)  # naive on purpose
    with pytest.raises(StatementError, match="naive datetime"):
        session.flush()
