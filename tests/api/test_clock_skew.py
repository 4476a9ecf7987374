"""A host whose clock is off (10 minutes fast, 25 minutes slow) agrees with every other host on
PostgreSQL, because time is read from the database server's clock (``shared.db.clock``): key
expiry, the audit trail's stamps and the webhooks' ``webhook-timestamp``. The host's clock is
skewed in-process: ``shared.db.types.utcnow`` (what every host-clock reading goes through)
and, for the sender, its ``time.time``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cli.main import app
from cli.webhooks import verify_webhook
from services.keys import create_key
from services.notify import dispatch_once
from services.notify import send as send_module
from shared.db import types as types_module
from shared.db.clock import db_now
from shared.db.models import ApiKey, AuditEvent, Job, Role
from tests.webhook_receiver import Receiver

from .conftest import ClientFactory, Keys
from .helpers import file_part, png, succeed_job
from .test_webhooks import _hook_key, _settings, receiver  # noqa: F401  (the receiver fixture)

ON_POSTGRES = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
SKEWS = [timedelta(minutes=10), timedelta(minutes=-25)]


@pytest.fixture(params=SKEWS, ids=["fast", "slow"])
def skew(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[timedelta]:
    off: timedelta = request.param

    class SkewedClock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
            return datetime.now(tz) + off

    monkeypatch.setattr(types_module, "datetime", SkewedClock)
    assert abs(types_module.utcnow() - datetime.now(UTC) - off) < timedelta(seconds=1)
    yield off


def _key_expiring(sm: sessionmaker[Session], in_: timedelta) -> str:
    with sm.begin() as session:
        return create_key(session, name="shift", role=Role.submitter, expires_at=db_now(session) + in_).secret


@ON_POSTGRES
def test_key_expiry_is_judged_by_the_database_clock(skew: timedelta, sm: sessionmaker[Session],
                                                    client: TestClient) -> None:
    live, expired = _key_expiring(sm, timedelta(minutes=5)), _key_expiring(sm, timedelta(minutes=-5))
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {live}"}).status_code == 200
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {expired}"}).status_code == 401


@ON_POSTGRES
def test_fada_keys_create_sets_expiry_by_the_database_clock(skew: timedelta, sm: sessionmaker[Session],
                                                            db_url: str, tmp_path: Path) -> None:
    env = {"FADA_DATABASE_URL": db_url, "FADA_DATA_DIR": str(tmp_path)}
    made = CliRunner().invoke(app, ["keys", "create", "--role", "qa", "--name", "desk", "--expires-in-days", "1"],
                              env=env)
    assert made.exit_code == 0, made.output
    with sm() as session:
        expires = session.scalars(select(ApiKey.expires_at).where(ApiKey.name == "desk")).one()
        assert expires is not None
        assert abs(expires - (db_now(session) + timedelta(days=1))) < timedelta(seconds=30)


@ON_POSTGRES
def test_the_audit_trail_is_stamped_by_the_database_clock(skew: timedelta, sm: sessionmaker[Session],
                                                          client: TestClient, keys: Keys) -> None:
    assert client.post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers).status_code == 202
    with sm() as session:
        [(at, created)] = session.execute(select(AuditEvent.at, Job.created_at)
                                          .join(Job, Job.id == AuditEvent.job_id)).all()
        assert abs(at - created) < timedelta(seconds=5), (at, created)
        assert abs(at - db_now(session)) < timedelta(seconds=30)


@ON_POSTGRES
def test_a_webhook_from_a_host_with_a_skewed_clock_is_accepted(
        skew: timedelta, make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session],
        receiver: Receiver, db_url: str, tmp_path: Path, broker_url: str,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = _hook_key(sm, keys, receiver.url, tmp_path)
    monkeypatch.setattr(send_module, "time", SimpleNamespace(time=lambda: time.time() + skew.total_seconds(),
                                                             perf_counter=time.perf_counter))
    job = make_client().post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers).json()["id"]
    succeed_job(sm, job)
    report = dispatch_once(sm, _settings(db_url, tmp_path, broker_url), owner="skewed-worker")
    assert len(report.delivered) == 1, report
    [got] = receiver.wait_for(1)
    event = verify_webhook(secret, got.headers, got.body)  # the receiver's clock is right; it refuses > 5 min
    assert event["data"]["job_id"] == job
    assert abs(int(got.headers["webhook-timestamp"]) - time.time()) < 30


def test_announcing_a_status_does_not_touch_the_job(make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session],
                                                    receiver: Receiver, db_url: str, tmp_path: Path,  # noqa: F811
                                                    broker_url: str) -> None:
    """``updated_at`` says when the job last changed; sending its event changes nothing in it."""
    _hook_key(sm, keys, receiver.url, tmp_path)
    job = make_client().post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers).json()["id"]
    succeed_job(sm, job)
    with sm() as session:
        before = session.get_one(Job, job).updated_at
    time.sleep(0.05)
    assert len(dispatch_once(sm, _settings(db_url, tmp_path, broker_url), owner="d").delivered) == 1
    with sm() as session:
        assert session.get_one(Job, job).updated_at == before


def test_a_retry_after_date_is_read_against_the_receiver_s_own_date(skew: timedelta,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``Retry-After: <HTTP date>`` is in the receiver's clock: the wait is measured from its
    ``Date`` header, so a sender whose clock is off still waits what was asked."""
    from email.utils import format_datetime

    import httpx

    monkeypatch.setattr(send_module, "time", SimpleNamespace(time=lambda: time.time() + skew.total_seconds(),
                                                             perf_counter=time.perf_counter))
    now = datetime.now(UTC).replace(microsecond=0)
    answer = httpx.Response(503, headers={"Date": format_datetime(now, usegmt=True),
                                          "Retry-After": format_datetime(now + timedelta(seconds=120), usegmt=True)})
    assert send_module._retry_after(answer) == 120
    assert send_module._retry_after(httpx.Response(503, headers={"Retry-After": "7"})) == 7
