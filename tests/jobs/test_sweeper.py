"""The sweeper: expired leases, attempts used up, the hard time limit, lost queued messages."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import claim, complete, get_job, intake, sweep
from services.maintenance import sweep_once
from services.queue import enqueue_job, make_celery
from shared.db.models import Job, JobStatus, ReviewState
from shared.db.types import utcnow
from shared.settings import Settings

from .helpers import make_document, png_bytes

GRACE = 30.0
HARD = 3600.0


def test_expired_lease_is_requeued_then_claimed_again(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    job_id = submit()
    with sm.begin() as s:
        assert claim(s, job_id, owner="dead", lease_seconds=10) is not None
    with sm.begin() as s:  # lease still live: nothing to do
        report = sweep(s, queued_grace_seconds=GRACE, hard_time_limit_seconds=HARD)
        assert report.requeue_ids == [] and report.failed_ids == []
    later = utcnow() + timedelta(seconds=11)
    with sm.begin() as s:
        report = sweep(s, now=later, queued_grace_seconds=GRACE, hard_time_limit_seconds=HARD)
    assert report.requeue_ids == [job_id] and report.failed_ids == []
    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None and job.status is JobStatus.queued and job.lease_owner is None
    with sm.begin() as s:
        claimed = claim(s, job_id, owner="w2", lease_seconds=60, now=later)
    assert claimed is not None and claimed.attempts == 2
    with sm.begin() as s:
        assert not complete(s, job_id, "dead", make_document())
        assert complete(s, job_id, "w2", make_document())


def test_expired_lease_on_last_attempt_fails(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    job_id = submit(max_attempts=1, mode="hitl")
    with sm.begin() as s:
        claim(s, job_id, owner="dead", lease_seconds=10)
    later = utcnow() + timedelta(seconds=11)
    with sm.begin() as s:
        assert claim(s, job_id, owner="w2", lease_seconds=60, now=later) is None  # no attempts left
        report = sweep(s, now=later, queued_grace_seconds=GRACE, hard_time_limit_seconds=HARD)
    assert report.failed_ids == [job_id] and report.requeue_ids == []
    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None and job.status is JobStatus.failed
        assert job.error_code == "max_attempts" and job.error_detail and "lease" in job.error_detail
        assert job.finished_at is not None
        assert job.review_state is ReviewState.not_required  # a failed HITL job waits for no review


def test_hard_time_limit(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    job_id = submit(mode="hitl")
    with sm.begin() as s:
        claim(s, job_id, owner="w", lease_seconds=100_000)  # renewed forever, but stuck
    with sm.begin() as s:
        report = sweep(
            s, now=utcnow() + timedelta(seconds=HARD + 1), queued_grace_seconds=1e9, hard_time_limit_seconds=HARD
        )
    assert report.failed_ids == [job_id] and report.requeue_ids == []
    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None and job.status is JobStatus.failed and job.error_code == "time_limit"
        assert job.review_state is ReviewState.not_required


def test_lost_queued_message_requeued_once_per_grace(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    job_id = submit()
    done = submit()
    with sm.begin() as s:
        claim(s, done, owner="w", lease_seconds=60)
    with sm.begin() as s:
        complete(s, done, "w", make_document())
    t0 = utcnow()
    with sm.begin() as s:
        assert sweep(s, now=t0, queued_grace_seconds=GRACE, hard_time_limit_seconds=HARD).requeue_ids == []
    t1 = t0 + timedelta(seconds=GRACE + 1)
    with sm.begin() as s:
        assert sweep(s, now=t1, queued_grace_seconds=GRACE, hard_time_limit_seconds=HARD).requeue_ids == [job_id]
    with sm.begin() as s:  # touched: not again within the grace period
        again = sweep(
            s, now=t1 + timedelta(seconds=GRACE / 2), queued_grace_seconds=GRACE, hard_time_limit_seconds=HARD
        )
        assert again.requeue_ids == []
    with sm.begin() as s:
        later = sweep(
            s, now=t1 + timedelta(seconds=GRACE + 1), queued_grace_seconds=GRACE, hard_time_limit_seconds=HARD
        )
        assert later.requeue_ids == [job_id]
    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None and job.status is JobStatus.queued and job.attempts == 0


def _claim_at(sm: sessionmaker[Session], job_id: str, when: datetime) -> None:
    with sm.begin() as s:
        assert claim(s, job_id, owner="w", lease_seconds=3600, now=when) is not None


def test_a_backlog_being_worked_through_is_not_re_enqueued(sm: sessionmaker[Session],
                                                           submit: Callable[..., str]) -> None:
    """Five jobs submitted together, one worker taking them oldest first: those still waiting
    after the grace period are waiting their turn, not lost. Re-enqueueing them every grace
    period sent a duplicate message for the whole backlog each time."""
    jobs = [submit() for _ in range(5)]
    t0 = utcnow()
    _claim_at(sm, jobs[0], t0 + timedelta(seconds=GRACE))  # the worker is taking messages
    with sm.begin() as s:
        report = sweep(s, now=t0 + timedelta(seconds=GRACE + 1), queued_grace_seconds=GRACE,
                       hard_time_limit_seconds=HARD)
    assert report.requeue_ids == []


def test_a_job_passed_over_by_a_later_one_is_re_enqueued(sm: sessionmaker[Session],
                                                         submit: Callable[..., str]) -> None:
    """The broker hands messages out oldest first: when a job submitted later has been taken,
    the older ones still queued lost their message; the newer ones are waiting their turn."""
    jobs = [submit() for _ in range(5)]
    t0 = utcnow()
    _claim_at(sm, jobs[2], t0 + timedelta(seconds=GRACE))
    t1 = t0 + timedelta(seconds=GRACE + 1)
    with sm.begin() as s:
        report = sweep(s, now=t1, queued_grace_seconds=GRACE, hard_time_limit_seconds=HARD)
    assert sorted(report.requeue_ids) == sorted(jobs[:2])
    with sm.begin() as s:  # touched: re-enqueued after the job that passed them, not again
        again = sweep(s, now=t1 + timedelta(seconds=1), queued_grace_seconds=GRACE, hard_time_limit_seconds=HARD)
    assert again.requeue_ids == []


def test_with_no_job_taken_for_a_grace_period_every_stale_job_is_re_enqueued(sm: sessionmaker[Session],
                                                                             submit: Callable[..., str]) -> None:
    """Workers idle or gone, or the broker lost everything: nothing is being taken, so every
    queued job past the grace period gets a new message, a backlog included."""
    jobs = [submit() for _ in range(3)]
    t0 = utcnow()
    _claim_at(sm, jobs[2], t0)  # taken long ago: no sign of the workers taking messages now
    with sm.begin() as s:
        report = sweep(s, now=t0 + timedelta(seconds=GRACE + 1), queued_grace_seconds=GRACE,
                       hard_time_limit_seconds=HARD)
    assert sorted(report.requeue_ids) == sorted(jobs[:2])


# --- sweep_once: publishing the messages ---------------------------------------------------


@pytest.fixture
def refusing_broker() -> Iterator[Callable[[str], bool]]:
    """``enqueue_job`` on a Redis broker nothing listens on: each publish is refused (False)."""
    app = make_celery(Settings(broker_url="redis://127.0.0.1:1/0", broker_timeout_seconds=0.5))
    yield lambda job_id: enqueue_job(app, job_id)
    app.close()


def _lost_messages(sm: sessionmaker[Session], submit: Callable[..., str]) -> list[str]:
    """Two jobs queued 20 minutes ago and never taken, and one whose worker died a minute ago
    (well within the grace period): all three are re-enqueued at the next sweep."""
    queued, dead = [submit(), submit()], submit()
    with sm.begin() as s:
        s.execute(update(Job).where(Job.id.in_(queued)).values(updated_at=utcnow() - timedelta(minutes=20)))
        assert claim(s, dead, owner="dead", lease_seconds=10, now=utcnow() - timedelta(minutes=1)) is not None
    return [*queued, dead]


def test_a_job_whose_message_could_not_be_published_is_tried_again_at_the_next_pass(
        sm: sessionmaker[Session], submit: Callable[..., str], refusing_broker: Callable[[str], bool],
        caplog: pytest.LogCaptureFixture) -> None:
    """During a broker outage the sweeper said it re-enqueued the jobs, and touched them, so
    once the broker was back they waited another grace period (300 s by default)."""
    jobs = _lost_messages(sm, submit)
    settings = Settings()
    tries: list[str] = []

    def refused(job_id: str) -> bool:
        tries.append(job_id)
        return refusing_broker(job_id)

    with caplog.at_level(logging.INFO, logger="services.maintenance"):
        report = sweep_once(sm, settings, refused)
    assert sorted(report.requeue_ids) == sorted(jobs)
    assert len(tries) == 1  # the first refusal ends the pass's publishing: a hung broker costs one timeout
    [line] = [r for r in caplog.records if r.name == "services.maintenance"]
    assert line.getMessage() == ("sweeper: re-enqueued 0 job(s), failed 0; 3 message(s) could not be published, "
                                 "the next pass tries again")
    assert line.levelno == logging.WARNING
    published: list[str] = []

    def enqueue(job_id: str) -> bool:  # the broker is back
        published.append(job_id)
        return True

    with sm() as s:  # marked: the next pass sends them whatever their age
        assert all(s.get(Job, j).unpublished for j in jobs)  # type: ignore[union-attr]
    again = sweep_once(sm, settings, enqueue)
    assert sorted(again.requeue_ids) == sorted(published) == sorted(jobs)
    with sm() as s:
        assert not any(s.get(Job, j).unpublished for j in jobs)  # type: ignore[union-attr]
    assert sweep_once(sm, settings, refusing_broker).requeue_ids == []  # published: touched until the grace ends
    with sm() as s:
        assert {get_job(s, j).status for j in jobs} == {JobStatus.queued}  # type: ignore[union-attr]


def test_a_publish_that_raises_is_counted_and_told_once_without_a_traceback(
        sm: sessionmaker[Session], submit: Callable[..., str], caplog: pytest.LogCaptureFixture) -> None:
    """The second publish raises: the first job is re-enqueued, the one that raised and the
    one after it (never tried) wait for the next pass, which publishes both."""
    jobs = _lost_messages(sm, submit)
    tries: list[str] = []

    def enqueue(job_id: str) -> bool:
        tries.append(job_id)
        if len(tries) == 2:
            raise ConnectionError("the broker hangs up")
        return True

    with caplog.at_level(logging.INFO):
        report = sweep_once(sm, Settings(), enqueue)
    assert tries == report.requeue_ids[:2] and sorted(report.requeue_ids) == sorted(jobs)
    [line] = [r for r in caplog.records if r.name == "services.maintenance"]
    assert line.getMessage() == ("sweeper: re-enqueued 1 job(s), failed 0; 2 message(s) could not be published "
                                 "(ConnectionError: the broker hangs up), the next pass tries again")
    assert not any(r.exc_info for r in caplog.records)
    assert sorted(sweep_once(sm, Settings(), lambda job_id: True).requeue_ids) == sorted(report.requeue_ids[1:])


def test_a_job_whose_message_the_broker_refused_at_submission_is_sent_at_the_next_pass(
        sm: sessionmaker[Session], api_key_id: str, refusing_broker: Callable[[str], bool]) -> None:
    """Not a grace period (300 s by default) later: a broker outage of a minute delays the jobs
    submitted during it by about a minute. A job a worker takes meanwhile loses its mark."""
    upload = intake.Upload(png_bytes())
    options: dict[str, Any] = {"api_key_id": api_key_id, "max_pixels": 10**8, "max_attempts": 3}
    refused = [intake.accept_job(sm, upload, intake.JobOptions(external_id=str(n)), enqueue=refusing_broker,
                                 **options).id for n in range(2)]
    sent = intake.accept_job(sm, upload, intake.JobOptions(external_id="sent"), enqueue=lambda _: True, **options).id
    with sm() as s:
        assert [s.get(Job, j).unpublished for j in [*refused, sent]] == [True, True, False]  # type: ignore[union-attr]
    with sm.begin() as s:
        assert claim(s, refused[1], owner="w", lease_seconds=60) is not None
        assert not s.get(Job, refused[1]).unpublished  # type: ignore[union-attr]
    published: list[str] = []

    def enqueue(job_id: str) -> bool:  # the broker is back
        published.append(job_id)
        return True

    report = sweep_once(sm, Settings(), enqueue)
    assert report.requeue_ids == published == [refused[0]]
    assert sweep_once(sm, Settings(), lambda job_id: True).requeue_ids == []  # sent once, mark cleared
