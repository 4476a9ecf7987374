"""claim -> complete / fail / retry, cancel, HITL resume: conditional updates, no double work."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import (
    InvalidTransition,
    JobNotFound,
    cancel,
    claim,
    complete,
    fail,
    get_job,
    get_result,
    release_for_retry,
    renew_lease,
    resume_hitl,
    sweep,
)
from shared.db.models import Job, JobStatus, Result, ReviewState
from shared.db.types import utcnow

from .helpers import make_document


def result_count(sm: sessionmaker[Session], job_id: str) -> int:
    with sm() as s:
        return s.scalar(select(func.count()).select_from(Result).where(Result.job_id == job_id)) or 0


def test_claim_complete_once(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    job_id = submit()
    with sm.begin() as s:
        claimed = claim(s, job_id, owner="w1", lease_seconds=60)
    assert claimed is not None and claimed.attempts == 1 and claimed.owner == "w1"
    with sm.begin() as s:
        assert claim(s, job_id, owner="w2", lease_seconds=60) is None  # live lease of another
        assert claim(s, job_id, owner="w1", lease_seconds=60) is None  # duplicate delivery
    with sm.begin() as s:
        assert not complete(s, job_id, "w2", make_document())  # not the owner
    assert result_count(sm, job_id) == 0
    with sm.begin() as s:
        assert renew_lease(s, job_id, "w1", 120)
        assert not renew_lease(s, job_id, "w2", 120)
    with sm.begin() as s:
        assert complete(s, job_id, "w1", make_document(revision="r7"))
    with sm.begin() as s:
        assert not complete(s, job_id, "w1", make_document())  # redelivered completion
        assert claim(s, job_id, owner="w3", lease_seconds=60) is None  # finished
    assert result_count(sm, job_id) == 1
    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None
        assert job.status is JobStatus.succeeded and job.lease_owner is None and job.lease_expires_at is None
        assert job.finished_at is not None and job.model_revision == "r7"
        result = get_result(s, job_id)
        assert result is not None
        assert result.model_revision == "r7" and result.untrained is True and result.profile == "fada-skd"
        assert result.document["job_id"] == job_id and result.document["status"] == "succeeded"


def test_expired_lease_can_be_claimed_again(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    job_id = submit()
    past = utcnow() - timedelta(minutes=5)
    with sm.begin() as s:
        assert claim(s, job_id, owner="dead", lease_seconds=10, now=past) is not None
    with sm.begin() as s:
        again = claim(s, job_id, owner="w2", lease_seconds=60)
    assert again is not None and again.attempts == 2
    with sm.begin() as s:
        assert not complete(s, job_id, "dead", make_document())  # the old owner lost it
        assert complete(s, job_id, "w2", make_document())


def test_fail_by_owner_only(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    job_id = submit()
    with sm.begin() as s:
        claim(s, job_id, owner="w1", lease_seconds=60)
    with sm.begin() as s:
        assert not fail(s, job_id, "other", "boom", "no")
        assert fail(s, job_id, "w1", "model_error", "the model crashed")
        assert not fail(s, job_id, "w1", "model_error", "again")
    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None and job.status is JobStatus.failed
        assert (job.error_code, job.error_detail) == ("model_error", "the model crashed")


def test_release_for_retry_until_max_attempts(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    job_id = submit(max_attempts=2)
    for attempt, expected in ((1, JobStatus.queued), (2, JobStatus.failed)):
        with sm.begin() as s:
            claimed = claim(s, job_id, owner="w", lease_seconds=60)
            assert claimed is not None and claimed.attempts == attempt
        with sm.begin() as s:
            assert release_for_retry(s, job_id, "other", "x") is None
            assert release_for_retry(s, job_id, "w", "broker hiccup") is expected
    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None and job.status is JobStatus.failed
        assert job.error_code == "max_attempts" and "broker hiccup" in (job.error_detail or "")


def test_cancel_transitions(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    queued = submit()
    with sm.begin() as s:
        assert cancel(s, queued)
        assert not cancel(s, queued)  # already canceled: a no-op
        assert claim(s, queued, owner="w", lease_seconds=60) is None  # a stale message is dropped
    running = submit()
    with sm.begin() as s:
        claim(s, running, owner="w", lease_seconds=60)
    with sm.begin() as s, pytest.raises(InvalidTransition) as err:
        cancel(s, running)
    assert err.value.current == "running"
    with sm.begin() as s:
        complete(s, running, "w", make_document())
    with sm.begin() as s, pytest.raises(InvalidTransition) as err:
        cancel(s, running)
    assert err.value.current == "succeeded"
    with sm.begin() as s, pytest.raises(JobNotFound):
        cancel(s, "00000000-0000-0000-0000-000000000000")


def test_hitl_review_then_resume_updates_the_one_result(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    job_id = submit(mode="hitl")
    with sm.begin() as s:
        assert claim(s, job_id, owner="w1", lease_seconds=60) is not None
    first = make_document(interpretation={"plane": "head"})
    with sm.begin() as s:
        assert complete(s, job_id, "w1", first, awaiting_review=True)
    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None and job.status is JobStatus.awaiting_review
        assert job.hitl_state is not None and job.hitl_state["interpretation"] == {"plane": "head"}
        assert job.lease_owner is None and job.finished_at is None
        result = get_result(s, job_id)
        assert result is not None and result.document["status"] == "awaiting_review"
        first_result_id = result.id
    with sm.begin() as s:
        assert claim(s, job_id, owner="w2", lease_seconds=60) is None  # waits for the reviewer
        assert resume_hitl(s, job_id, {"next_phases": ["detect"], "group": "head"})
        assert not resume_hitl(s, job_id, {"next_phases": []})  # repeated: a no-op
    with sm.begin() as s:
        claimed = claim(s, job_id, owner="w2", lease_seconds=60)
        assert claimed is not None and claimed.resuming
        assert claimed.hitl_choice == {"next_phases": ["detect"], "group": "head"}
        assert claimed.hitl_state is not None and claimed.hitl_state["interpretation"] == {"plane": "head"}
    final = make_document(revision="r2", interpretation={"plane": "head"})
    with sm.begin() as s:
        assert complete(s, job_id, "w2", final)
    with sm.begin() as s:
        assert not complete(s, job_id, "w2", final)
    assert result_count(sm, job_id) == 1
    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None and job.status is JobStatus.succeeded and job.finished_at is not None
        result = get_result(s, job_id)
        assert result is not None and result.id == first_result_id
        assert result.document["status"] == "succeeded" and result.model_revision == "r2"


def test_cancel_awaiting_review(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    job_id = submit(mode="hitl")
    with sm.begin() as s:
        claim(s, job_id, owner="w", lease_seconds=60)
    with sm.begin() as s:
        complete(s, job_id, "w", make_document(), awaiting_review=True)
    with sm.begin() as s:
        assert cancel(s, job_id)
        assert not resume_hitl(s, job_id, {"next_phases": ["detect"]})
    with sm() as s:
        job = s.get_one(Job, job_id)
        assert job.status is JobStatus.canceled and job.review_state is ReviewState.not_required


def test_every_way_into_waiting_stamps_waiting_since_and_nothing_else_moves_it(
        sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    """``waiting_since`` (the metric of the oldest waiting job) is when the job last began to
    wait for a worker or a sonographer: its submission, a retry, a requeue after a dead
    worker, the end of a HITL first stage, a resume. A claim or the end of the job keeps it."""
    job_id = submit(mode="hitl")
    start = utcnow() + timedelta(minutes=1)
    at = [start + timedelta(minutes=i) for i in range(10)]

    def since() -> object:
        with sm() as s:
            job = get_job(s, job_id)
            assert job is not None
            return job.waiting_since

    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None and job.waiting_since == job.created_at
    with sm.begin() as s:
        assert claim(s, job_id, owner="w1", lease_seconds=60, now=at[1]) is not None
    assert since() != at[1]
    with sm.begin() as s:
        assert release_for_retry(s, job_id, "w1", "transient", now=at[2]) is JobStatus.queued
    assert since() == at[2]
    with sm.begin() as s:
        assert claim(s, job_id, owner="dead", lease_seconds=10, now=at[3]) is not None
    with sm.begin() as s:
        assert sweep(s, now=at[4], queued_grace_seconds=30, hard_time_limit_seconds=3600).requeue_ids == [job_id]
    assert since() == at[4]
    with sm.begin() as s:
        assert claim(s, job_id, owner="w2", lease_seconds=60, now=at[5]) is not None
        assert complete(s, job_id, "w2", make_document(), awaiting_review=True, now=at[6])
    assert since() == at[6]
    with sm.begin() as s:
        assert resume_hitl(s, job_id, {"next_phases": ["detect"], "group": None}, now=at[7])
    assert since() == at[7]
    with sm.begin() as s:
        assert claim(s, job_id, owner="w3", lease_seconds=60, now=at[8]) is not None
        assert complete(s, job_id, "w3", make_document(), now=at[9])
    assert since() == at[7]
