"""claim_ready: a worker claims a batch of ready jobs (the one it was woken for first, then the
oldest queued), and concurrent workers take disjoint batches, on PostgreSQL and SQLite."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import DecodedImage
from services.jobs import ClaimedJob, cancel, claim, claim_ready, complete, fail, get_job, resume_hitl, submit_job
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import upgrade
from shared.db.models import ApiKey, Job, JobStatus, Role
from shared.db.types import new_id, utcnow

from .helpers import make_document


def submit_aged(sm: sessionmaker[Session], submit: Callable[..., str], n: int, **kwargs: object) -> list[str]:
    """``n`` queued jobs, oldest first, created a second apart (so the order never depends on
    the clock's resolution)."""
    ids = [submit(**kwargs) for _ in range(n)]
    base = utcnow() - timedelta(hours=1)
    with sm.begin() as s:
        for i, job_id in enumerate(ids):
            s.execute(update(Job).where(Job.id == job_id).values(created_at=base + timedelta(seconds=i)))
    return ids


def ready(sm: sessionmaker[Session], owner: str, limit: int, first: str | None = None) -> list[ClaimedJob]:
    with sm.begin() as s:
        return claim_ready(s, owner=owner, lease_seconds=60, limit=limit, first=first)


def status(sm: sessionmaker[Session], job_id: str) -> JobStatus:
    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None
        return job.status


def test_oldest_first_up_to_the_limit(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    ids = submit_aged(sm, submit, 5)
    batch = ready(sm, "w1", 3)
    assert [c.id for c in batch] == ids[:3]
    assert all(c.owner == "w1" and c.attempts == 1 and c.lease_expires_at > utcnow() for c in batch)
    assert [status(sm, i) for i in ids] == [JobStatus.running] * 3 + [JobStatus.queued] * 2
    with sm() as s:
        job = get_job(s, ids[0])
        assert job is not None and job.lease_owner == "w1" and job.started_at is not None
    assert [c.id for c in ready(sm, "w2", 3)] == ids[3:]
    assert ready(sm, "w3", 3) == []


def test_first_comes_first_even_when_not_the_oldest(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    ids = submit_aged(sm, submit, 4)
    batch = ready(sm, "w1", 3, first=ids[3])
    assert [c.id for c in batch] == [ids[3], ids[0], ids[1]]
    assert status(sm, ids[2]) is JobStatus.queued


def test_limit_one_with_first_is_a_plain_claim(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    """The slot of ``first`` is kept for it: a message for a job that is no longer claimable
    takes nothing else at batch size 1 (today's one-job behaviour)."""
    ids = submit_aged(sm, submit, 3)
    with sm.begin() as s:
        cancel(s, ids[2])
    assert ready(sm, "w1", 1, first=ids[2]) == []
    assert [c.id for c in ready(sm, "w1", 2, first=ids[2])] == [ids[0]]
    assert [c.id for c in ready(sm, "w1", 1, first=ids[1])] == [ids[1]]


def test_jobs_not_ready_are_not_taken(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    succeeded, failed, canceled, awaiting, leased, expired = submit_aged(sm, submit, 6, mode="hitl")
    with sm.begin() as s:
        for job_id in (succeeded, failed, awaiting, leased):
            assert claim(s, job_id, owner="other", lease_seconds=60) is not None
        assert claim(s, expired, owner="dead", lease_seconds=10, now=utcnow() - timedelta(minutes=5)) is not None
    with sm.begin() as s:
        assert complete(s, succeeded, "other", make_document())
        assert fail(s, failed, "other", "boom", None)
        assert complete(s, awaiting, "other", make_document(), awaiting_review=True)
        assert cancel(s, canceled)
    assert ready(sm, "w1", 10) == []  # an expired lease is the sweeper's to requeue first
    assert [status(sm, i) for i in (succeeded, failed, canceled, awaiting, leased, expired)] == [
        JobStatus.succeeded, JobStatus.failed, JobStatus.canceled, JobStatus.awaiting_review, JobStatus.running,
        JobStatus.running]
    # ... but the job a message woke the worker for is claimed by claim()'s rule
    [again] = ready(sm, "w1", 10, first=expired)
    assert again.id == expired and again.attempts == 2
    assert ready(sm, "w1", 10, first=leased) == []


def test_a_resumed_hitl_job_is_claimable(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    plain, resumed = submit_aged(sm, submit, 2, mode="hitl")
    with sm.begin() as s:
        assert claim(s, resumed, owner="w0", lease_seconds=60) is not None
    with sm.begin() as s:
        assert complete(s, resumed, "w0", make_document(), awaiting_review=True)
    with sm.begin() as s:
        assert resume_hitl(s, resumed, {"next_phases": ["detect"], "group": None})
    batch = ready(sm, "w1", 5)
    assert [c.id for c in batch] == [plain, resumed]
    assert not batch[0].resuming and batch[1].resuming
    assert batch[1].hitl_choice == {"next_phases": ["detect"], "group": None} and batch[1].hitl_state is not None
    assert batch[1].attempts == 1  # a resume starts a fresh attempt budget


def test_limit_must_be_positive(sm: sessionmaker[Session]) -> None:
    with pytest.raises(ValueError, match="limit"), sm.begin() as s:
        claim_ready(s, owner="w1", lease_seconds=60, limit=0)


def test_two_threads_take_disjoint_batches_covering_every_job(sm: sessionmaker[Session],
                                                              submit: Callable[..., str]) -> None:
    """Two workers draining the queue at once: every job is claimed exactly once."""
    ids = submit_aged(sm, submit, 20)
    barrier = threading.Barrier(2)
    taken: dict[str, list[str]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def drain(owner: str) -> None:
        try:
            barrier.wait()
            while batch := ready(sm, owner, 3, first=ids[-1]):
                taken[owner].extend(c.id for c in batch)
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(owner,)) for owner in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert not set(taken["a"]) & set(taken["b"])
    assert sorted(taken["a"] + taken["b"]) == sorted(ids)
    with sm() as s:
        for job_id in ids:
            job = get_job(s, job_id)
            assert job is not None and job.attempts == 1 and job.lease_owner in taken


@pytest.fixture
def postgres_sm(postgres_url: str) -> Iterator[sessionmaker[Session]]:
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    yield make_sessionmaker(engine)
    engine.dispose()


def test_postgres_skips_rows_another_open_transaction_claimed(postgres_sm: sessionmaker[Session],
                                                              decoded: DecodedImage) -> None:
    """SKIP LOCKED: while worker A's claim is not yet committed, worker B neither waits for it
    nor takes A's jobs; it takes the next ones. (SQLite serialises writers instead.)"""
    sm = postgres_sm
    key_id = new_id()
    with sm.begin() as s:
        s.add(ApiKey(id=key_id, name="t", role=Role.submitter, key_prefix="fada_t", key_hash=new_id()))

    def submit() -> str:
        with sm.begin() as s:
            return submit_job(s, decoded=decoded, original_size=1, api_key_id=key_id).id

    ids = submit_aged(sm, submit, 5)
    with sm.begin() as a:
        first = claim_ready(a, owner="a", lease_seconds=60, limit=2)
        with sm.begin() as b:
            b.execute(text("SET LOCAL lock_timeout = '2s'"))  # a wait would fail, not hang
            second = claim_ready(b, owner="b", lease_seconds=60, limit=2)
    assert [c.id for c in first] == ids[:2] and [c.id for c in second] == ids[2:4]
    assert status(sm, ids[4]) is JobStatus.queued
