"""Hosts whose clocks disagree share the database's clock (PostgreSQL): a worker running ten
minutes slow keeps its lease against a sweeper on time, and its heartbeat still counts."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import claim, get_job, renew_lease, submit_job, sweep
from services.workers import beat, live_workers
from shared.db.clock import db_now
from shared.db.models import JobStatus
from shared.db.types import utcnow

SKEW = timedelta(minutes=10)


@pytest.fixture
def db_url(postgres_url: str) -> str:  # the shared clock is PostgreSQL's: SQLite is one host
    from shared.db.migrate import upgrade

    upgrade(postgres_url)
    return postgres_url


@contextmanager
def host_clock(monkeypatch: pytest.MonkeyPatch, offset: timedelta) -> Iterator[None]:
    """Run the block as a host whose clock is off by ``offset``: every ``utcnow`` the
    project's modules imported gives the skewed time."""
    def skewed() -> datetime:
        return datetime.now(UTC) + offset

    with monkeypatch.context() as patch:
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] in {"services", "shared", "api", "worker"} and hasattr(module, "utcnow"):
                patch.setattr(module, "utcnow", skewed)
        yield


def test_db_now_is_the_servers_clock(sm: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    with sm() as s, host_clock(monkeypatch, -SKEW):
        now = db_now(s)
        server = s.scalar(select(func.clock_timestamp()))
    assert server is not None
    assert now.tzinfo is UTC
    assert abs(server - now) < timedelta(seconds=5)
    assert abs(utcnow() - now) < timedelta(seconds=5)  # the unpatched host and the server agree here


def test_a_slow_workers_lease_holds_against_a_sweeper_on_time(
    sm: sessionmaker[Session], submit: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = submit()
    with host_clock(monkeypatch, -SKEW):  # the worker's host runs ten minutes slow
        with sm.begin() as s:
            claimed = claim(s, job_id, owner="slow", lease_seconds=60)
        assert claimed is not None
        with sm.begin() as s:
            assert renew_lease(s, job_id, "slow", 60)
    with sm.begin() as s:  # the sweeper's host is on time
        report = sweep(s, queued_grace_seconds=30, hard_time_limit_seconds=300)
    assert report.requeue_ids == [] and report.failed_ids == []
    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None and job.status is JobStatus.running and job.lease_owner == "slow"
        assert job.started_at is not None and abs(job.started_at - utcnow()) < timedelta(seconds=30)
        assert job.lease_expires_at is not None and job.lease_expires_at > utcnow()


def test_a_fast_sweeper_takes_no_live_job_and_no_fresh_queued_job(
    sm: sessionmaker[Session], submit: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    running, queued = submit(), submit()
    with sm.begin() as s:
        assert claim(s, running, owner="w", lease_seconds=60) is not None
    with host_clock(monkeypatch, SKEW), sm.begin() as s:  # ten minutes fast: past the lease, limit and grace
        report = sweep(s, queued_grace_seconds=30, hard_time_limit_seconds=300)
    assert report.requeue_ids == [] and report.failed_ids == []
    with sm() as s:
        assert [get_job(s, i).status for i in (running, queued)] == [JobStatus.running, JobStatus.queued]  # type: ignore[union-attr]


def test_a_job_submitted_by_a_slow_gateway_is_not_stale_at_once(
    sm: sessionmaker[Session], api_key_id: str, decoded: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    with host_clock(monkeypatch, -SKEW), sm.begin() as s:
        job_id = submit_job(s, decoded=decoded, original_size=1, api_key_id=api_key_id).id  # type: ignore[arg-type]
    with sm.begin() as s:
        report = sweep(s, queued_grace_seconds=30, hard_time_limit_seconds=300)
    assert job_id not in report.requeue_ids


class _Model:
    base, revision, untrained = "tiny", "r1", True


def test_a_slow_workers_heartbeat_counts(sm: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    with host_clock(monkeypatch, -SKEW), sm.begin() as s:
        beat(s, "slow-worker", provenance=_Model(), queues="gpu")
    with sm() as s:  # the gateway, on time, asks who spoke in the last 30 s
        assert [w.id for w in live_workers(s, within_seconds=30)] == ["slow-worker"]
