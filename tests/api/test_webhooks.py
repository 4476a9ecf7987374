"""Webhooks end to end on PostgreSQL and SQLite: jobs submitted through the gateway, events
sent by the dispatcher to a real HTTP receiver on loopback, which checks the Standard
Webhooks signature with the client's verification helper."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cli.client import ApiError, FadaClient
from cli.webhooks import WebhookVerificationError, verify_webhook
from services.jobs import resume_hitl
from services.keys import configure_webhook
from services.notify import dispatch_once, sign
from services.notify import send as send_module
from services.notify.dispatch import DispatchReport
from services.notify.sealing import secret_box
from services.notify.targets import InvalidTarget, pin_target
from shared.db.models import ApiKey, Delivery, DeliveryStatus, Job
from shared.db.types import utcnow
from shared.settings import Settings
from tests.webhook_receiver import Receiver, running_receiver, tls_pair

from .conftest import AppFactory, ClientFactory, Keys, Serve, make_settings
from .helpers import assert_problem, file_part, png, succeed_job

THIN_KEYS = {"type", "timestamp", "data"}
LOCAL = ["127.0.0.1"]  # the test receivers' host: the service's own, so it must be listed
DATA_KEYS = {"job_id", "status", "batch_id", "links"}


@pytest.fixture
def receiver() -> Any:
    with running_receiver() as r:
        yield r


def _hook_key(sm: sessionmaker[Session], keys: Keys, url: str | None, data_dir: Path) -> str:
    """The submitter key's webhook, its secret sealed by the key file under ``data_dir`` (the
    dispatcher's settings below use the same directory)."""
    with sm.begin() as session:
        _, secret = configure_webhook(session, keys.submitter.id, url=url, allowed_hosts=LOCAL,
                                      box=secret_box(Settings(data_dir=data_dir), create=True))
    assert secret is not None and secret.startswith("whsec_")
    return secret


def _submit(client: TestClient, keys: Keys, **fields: str) -> str:
    r = client.post("/v1/jobs", files=file_part(png()), data=fields, headers=keys.submitter.headers)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _settings(db_url: str, tmp_path: Path, broker_url: str, **overrides: Any) -> Settings:
    return make_settings(db_url, tmp_path, broker_url, **{"notify_retry_base_seconds": 0.05,
                                                          "webhook_allowed_hosts": LOCAL, **overrides})


def _dispatch_until(sm: sessionmaker[Session], settings: Settings, done: Any,
                    timeout: float = 20) -> list[DispatchReport]:
    reports, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        reports.append(dispatch_once(sm, settings, owner="test-dispatcher"))
        if done():
            return reports
        time.sleep(0.02)
    raise AssertionError(f"not done after {timeout} s: {reports}")


def test_the_signature_matches_the_standard_webhooks_example() -> None:
    # the example of the Standard Webhooks specification (and of its reference libraries)
    assert sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                b'{"test": 2432232314}') == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_finished_job_is_announced_once_signed_and_thin(make_client: ClientFactory, keys: Keys,
                                                        sm: sessionmaker[Session], receiver: Receiver, db_url: str,
                                                        tmp_path: Path, broker_url: str) -> None:
    secret = _hook_key(sm, keys, receiver.url, tmp_path)
    client = make_client(public_url="https://fada.example.org")
    job_id = _submit(client, keys)
    settings = _settings(db_url, tmp_path, broker_url, public_url="https://fada.example.org")
    assert dispatch_once(sm, settings, owner="d").created == 0  # queued: nothing to say yet
    succeed_job(sm, job_id)
    report = dispatch_once(sm, settings, owner="d")
    assert report.created == 1 and len(report.delivered) == 1
    [got] = receiver.wait_for(1)
    event = verify_webhook(secret, got.headers, got.body)
    assert set(event) == THIN_KEYS and set(event["data"]) == DATA_KEYS
    assert event["type"] == "job.succeeded" and event["data"]["job_id"] == job_id
    base = f"https://fada.example.org/v1/jobs/{job_id}"
    assert event["data"]["links"] == {"job": base, "result": f"{base}/result", "coco": f"{base}/coco"}
    assert got.headers["webhook-id"] == report.delivered[0]
    with pytest.raises(WebhookVerificationError):  # the receiver refuses anything tampered with
        verify_webhook(secret, got.headers, got.body.replace(b"succeeded", b"failed"))
    # nothing new: nothing more is sent
    assert dispatch_once(sm, settings, owner="d") == DispatchReport()
    assert len(receiver.requests) == 1
    log = client.get(f"/v1/jobs/{job_id}/deliveries", headers=keys.submitter.headers).json()
    assert [(d["kind"], d["event"], d["status"], d["url"]) for d in log] == [
        ("webhook", "job.succeeded", "delivered", receiver.url)]
    assert [(t["attempt"], t["status_code"], t["error"]) for t in log[0]["tries"]] == [(1, 200, None)]
    assert client.get(f"/v1/jobs/{job_id}/deliveries", headers=keys.other_submitter.headers).status_code == 404
    with sm() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.notify is False  # final: no longer scanned


def test_a_rotated_signing_secret_signs_beside_the_new_one_for_its_overlap(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], receiver: Receiver, db_url: str,
        tmp_path: Path, broker_url: str) -> None:
    """A receiver still on the old secret and one already on the new one both accept every
    event of the overlap; after it, only the new secret's signature comes."""
    old = _hook_key(sm, keys, receiver.url, tmp_path)
    with sm.begin() as session:
        _, new = configure_webhook(session, keys.submitter.id, url=None, rotate=True, overlap=timedelta(hours=1),
                                   box=secret_box(Settings(data_dir=tmp_path)), allowed_hosts=LOCAL)
    assert new is not None and new != old
    client, settings = make_client(), _settings(db_url, tmp_path, broker_url)
    during = _submit(client, keys)
    succeed_job(sm, during)
    dispatch_once(sm, settings, owner="d")
    [got] = receiver.wait_for(1)
    assert len(got.headers["webhook-signature"].split()) == 2
    assert verify_webhook(old, got.headers, got.body)["data"]["job_id"] == during
    assert verify_webhook(new, got.headers, got.body)["data"]["job_id"] == during

    with sm.begin() as session:  # the hour is over
        session.execute(update(ApiKey).where(ApiKey.id == keys.submitter.id)
                        .values(previous_webhook_secret_until=utcnow() - timedelta(seconds=1)))
    after = _submit(client, keys)
    succeed_job(sm, after)
    dispatch_once(sm, settings, owner="d")
    got = receiver.wait_for(2)[1]
    assert len(got.headers["webhook-signature"].split()) == 1
    assert verify_webhook(new, got.headers, got.body)["data"]["job_id"] == after
    with pytest.raises(WebhookVerificationError, match="no signature matches"):
        verify_webhook(old, got.headers, got.body)


def test_each_status_of_a_hitl_job_is_announced(make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session],
                                               receiver: Receiver, db_url: str, tmp_path: Path,
                                               broker_url: str) -> None:
    secret = _hook_key(sm, keys, receiver.url, tmp_path)
    client = make_client()
    job_id = _submit(client, keys, mode="hitl")
    settings = _settings(db_url, tmp_path, broker_url)
    succeed_job(sm, job_id, awaiting_review=True)
    dispatch_once(sm, settings, owner="d")
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=keys.submitter.headers).status_code == 200
    dispatch_once(sm, settings, owner="d")
    events = [verify_webhook(secret, r.headers, r.body) for r in receiver.wait_for(2)]
    assert [(e["type"], e["data"]["status"]) for e in events] == [
        ("job.awaiting_review", "awaiting_review"), ("job.canceled", "canceled")]
    # No FADA_PUBLIC_URL: the links start where the job was submitted (the client's Host)
    base = f"http://testserver/v1/jobs/{job_id}"
    assert events[0]["data"]["links"] == {"job": base, "result": f"{base}/result"}
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 2


def test_without_a_public_url_the_links_start_where_the_job_was_submitted(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], receiver: Receiver, db_url: str,
        tmp_path: Path, broker_url: str) -> None:
    """A receiver can follow the links of an event as they are, with no FADA_PUBLIC_URL set: they
    start at the gateway's address as the submitter reached it (a single job, a batch's job)."""
    secret = _hook_key(sm, keys, receiver.url, tmp_path)
    client = make_client()
    headers = {**keys.submitter.headers, "Host": "fada-gw.hospital.example:8443"}
    single = client.post("/v1/jobs", files=file_part(png()), headers=headers)
    batch = client.post("/v1/batches", files=[("file", ("b.png", png(2), "image/png"))], headers=headers)
    assert single.status_code == batch.status_code == 202, (single.text, batch.text)
    job_ids = [single.json()["id"], batch.json()["jobs"][0]["id"]]
    for job_id in job_ids:
        succeed_job(sm, job_id)
    dispatch_once(sm, _settings(db_url, tmp_path, broker_url), owner="d")
    events = [verify_webhook(secret, r.headers, r.body) for r in receiver.wait_for(2)]
    links = {event["data"]["job_id"]: event["data"]["links"] for event in events}
    for job_id in job_ids:
        base = f"http://fada-gw.hospital.example:8443/v1/jobs/{job_id}"
        assert links[job_id] == {"job": base, "result": f"{base}/result", "coco": f"{base}/coco"}
    # a Host header too long to keep: the job is taken all the same, its links relative
    huge = client.post("/v1/jobs", files=file_part(png(3)), headers={**headers, "Host": "h" * 3000 + ".example"})
    assert huge.status_code == 202, huge.text
    succeed_job(sm, huge.json()["id"])
    dispatch_once(sm, _settings(db_url, tmp_path, broker_url), owner="d")
    [*_, last] = receiver.wait_for(3)
    assert verify_webhook(secret, last.headers, last.body)["data"]["links"]["job"] == f"/v1/jobs/{huge.json()['id']}"


def test_failed_tries_are_retried_with_backoff_and_logged(make_client: ClientFactory, keys: Keys,
                                                         sm: sessionmaker[Session], receiver: Receiver, db_url: str,
                                                         tmp_path: Path, broker_url: str) -> None:
    secret = _hook_key(sm, keys, receiver.url, tmp_path)
    receiver.script = [(500, {}), (503, {"Retry-After": "1"})]
    receiver.error_body = b"internal: db password hunter2"  # what an internal server might answer
    client = make_client()
    job_id = _submit(client, keys)
    succeed_job(sm, job_id)
    settings = _settings(db_url, tmp_path, broker_url, notify_retry_base_seconds=0.2)
    _dispatch_until(sm, settings, lambda: len(receiver.requests) == 3)
    first, second, third = receiver.requests
    # the same message every time (one webhook-id), each try signed afresh
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert all(verify_webhook(secret, r.headers, r.body)["data"]["job_id"] == job_id for r in receiver.requests)
    assert second.at - first.at >= 0.2 * 0.9  # the first backoff
    assert third.at - second.at >= 1.0  # Retry-After outweighs the (shorter) second backoff
    log = client.get(f"/v1/jobs/{job_id}/deliveries", headers=keys.submitter.headers).json()
    assert log[0]["status"] == "delivered" and log[0]["attempts"] == 3
    assert [t["status_code"] for t in log[0]["tries"]] == [500, 503, 200]
    # status only: a caller-chosen URL must not make the log a window on internal servers' answers
    assert [t["error"] for t in log[0]["tries"]] == ["HTTP 500 Internal Server Error", "HTTP 503 Service Unavailable",
                                                    None]


def test_a_job_s_events_arrive_in_order_after_a_receiver_outage(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], receiver: Receiver, db_url: str,
        tmp_path: Path, broker_url: str) -> None:
    """The receiver is down while the HITL job's awaiting_review event is tried (its backoff
    grows), then the job succeeds, then the receiver is back. The stale awaiting_review went
    out after succeeded (each delivery had its own retry schedule): a receiver that applies
    the last event it got showed a finished job as waiting for review."""
    secret = _hook_key(sm, keys, receiver.url, tmp_path)
    client = make_client()
    job_id = _submit(client, keys, mode="hitl")
    settings = _settings(db_url, tmp_path, broker_url, notify_retry_base_seconds=0.1)
    receiver.script = [(503, {})] * 100  # down
    succeed_job(sm, job_id, awaiting_review=True)
    _dispatch_until(sm, settings, lambda: len(receiver.requests) == 3)  # its next try is ~1.6 s away
    with sm.begin() as session:
        assert resume_hitl(session, job_id, {"next_phases": ["detect"]})
    succeed_job(sm, job_id)
    assert dispatch_once(sm, settings, owner="d").created == 1  # job.succeeded: it waits its turn
    down = len(receiver.requests)
    receiver.script.clear()  # back

    def both_delivered() -> bool:
        with sm() as session:
            return session.scalars(select(Delivery.status)).all() == [DeliveryStatus.delivered] * 2

    reports = _dispatch_until(sm, settings, both_delivered)
    tried = [verify_webhook(secret, r.headers, r.body)["type"] for r in receiver.requests]
    assert tried[:down] == ["job.awaiting_review"] * down  # nothing newer went out while it was pending
    assert tried[down:] == ["job.awaiting_review", "job.succeeded"]  # each accepted once, in order
    accepted = [r.headers["webhook-id"] for r in receiver.requests[down:]]
    # the next event goes on the pass after the earlier one's delivery, not after a backoff of its own
    assert [r.delivered for r in reports[-2:]] == [[accepted[0]], [accepted[1]]]
    log = client.get(f"/v1/jobs/{job_id}/deliveries", headers=keys.submitter.headers).json()
    assert [(d["event"], d["attempts"]) for d in log] == [("job.awaiting_review", down + 1), ("job.succeeded", 1)]


def test_a_job_stuck_behind_its_earlier_event_does_not_hold_up_other_jobs(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], receiver: Receiver, db_url: str,
        tmp_path: Path, broker_url: str) -> None:
    secret = _hook_key(sm, keys, receiver.url, tmp_path)
    client = make_client()
    stuck, other = _submit(client, keys, mode="hitl"), _submit(client, keys)
    settings = _settings(db_url, tmp_path, broker_url)
    receiver.script = [(503, {"Retry-After": "3600"})]  # the stuck job's first event: try again in an hour
    succeed_job(sm, stuck, awaiting_review=True)
    assert len(dispatch_once(sm, settings, owner="d").retrying) == 1
    with sm.begin() as session:
        assert resume_hitl(session, stuck, {"next_phases": ["detect"]})
    succeed_job(sm, stuck)
    succeed_job(sm, other)
    report = dispatch_once(sm, settings, owner="d")
    assert report.created == 2 and len(report.delivered) == 1 and not report.retrying
    assert dispatch_once(sm, settings, owner="d").delivered == []  # the stuck job's succeeded still waits
    events = [verify_webhook(secret, r.headers, r.body) for r in receiver.requests]
    assert [(e["type"], e["data"]["job_id"]) for e in events] == [("job.awaiting_review", stuck),
                                                                  ("job.succeeded", other)]
    log = client.get(f"/v1/jobs/{stuck}/deliveries", headers=keys.submitter.headers).json()
    assert [(d["event"], d["status"], d["attempts"]) for d in log] == [("job.awaiting_review", "pending", 1),
                                                                      ("job.succeeded", "pending", 0)]


def test_a_dispatcher_without_the_sealing_key_logs_why_and_sends_once_it_has_it(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], receiver: Receiver, db_url: str,
        tmp_path: Path, broker_url: str) -> None:
    secret = _hook_key(sm, keys, receiver.url, tmp_path / "admin")  # sealed by a key file elsewhere
    with sm() as session:
        stored = session.scalars(select(ApiKey.webhook_secret)
                                 .where(ApiKey.id == keys.submitter.id)).one()
    assert stored is not None and secret not in stored
    client = make_client()
    job_id = _submit(client, keys)
    succeed_job(sm, job_id)
    keyless = _settings(db_url, tmp_path / "worker", broker_url, notify_retry_base_seconds=0.01)
    report = dispatch_once(sm, keyless, owner="d")
    assert report.retrying and not receiver.requests
    [delivery] = client.get(f"/v1/jobs/{job_id}/deliveries", headers=keys.submitter.headers).json()
    assert delivery["status"] == "pending" and "has no key" in delivery["tries"][0]["error"]
    assert not delivery["tries"][0]["error"].startswith("_")  # the reason, not an internal class name
    key = (tmp_path / "admin" / "secrets.key").read_text().strip()
    _dispatch_until(sm, _settings(db_url, tmp_path / "worker", broker_url, secrets_key=key),
                    lambda: len(receiver.requests) == 1)
    assert verify_webhook(secret, receiver.requests[0].headers, receiver.requests[0].body)["data"]["job_id"] == job_id


def test_a_receiver_that_never_accepts_ends_failed(make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session],
                                                  db_url: str, tmp_path: Path, broker_url: str) -> None:
    with running_receiver() as gone:
        url = gone.url  # the port is closed once the receiver stops: connections are refused
    _hook_key(sm, keys, url, tmp_path)
    client = make_client()
    job_id = _submit(client, keys)
    succeed_job(sm, job_id)
    settings = _settings(db_url, tmp_path, broker_url, notify_max_attempts=2, notify_retry_base_seconds=0.01)

    def ended() -> bool:
        with sm() as session:
            return session.scalar(select(Delivery.status)) is DeliveryStatus.failed

    _dispatch_until(sm, settings, ended)
    log = client.get(f"/v1/jobs/{job_id}/deliveries", headers=keys.submitter.headers).json()
    assert log[0]["status"] == "failed" and log[0]["next_attempt_at"] is None
    assert [(t["attempt"], t["status_code"]) for t in log[0]["tries"]] == [(1, None), (2, None)]
    assert "ConnectError" in log[0]["last_error"]


def test_a_job_s_own_callback_url_needs_a_signing_secret(make_app: AppFactory, serve: Serve, keys: Keys,
                                                        sm: sessionmaker[Session], receiver: Receiver, db_url: str,
                                                        tmp_path: Path, broker_url: str) -> None:
    fada = FadaClient(serve(make_app(webhook_allowed_hosts=LOCAL)), keys.submitter.secret)  # over real HTTP
    with pytest.raises(ApiError) as refused:
        fada.submit(png(), callback_url=receiver.url)
    assert refused.value.status == 422 and refused.value.problem["code"] == "invalid_callback_url"
    assert "webhook secret" in refused.value.problem["detail"]
    secret = _hook_key(sm, keys, None, tmp_path)  # a secret, no default URL
    plain = fada.submit(png())["id"]
    own = fada.submit(png(), callback_url=receiver.url + "?job=mine")["id"]
    for job_id in (plain, own):
        succeed_job(sm, job_id)
    dispatch_once(sm, _settings(db_url, tmp_path, broker_url), owner="d")
    [got] = receiver.wait_for(1)
    assert got.path == "/hooks/fada?job=mine"
    assert verify_webhook(secret, got.headers, got.body)["data"]["job_id"] == own
    with sm() as session:
        assert session.get(Job, plain).notify is False  # type: ignore[union-attr]


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://127.0.0.1/x", "http(s)"), ("http://user:pw@127.0.0.1/x", "credentials"),
    ("http://10.1.2.3/x", "not in the allowed hosts"), ("/relative", "http(s)"),
])
def test_callback_urls_the_service_will_not_call(make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session],
                                                url: str, why: str, tmp_path: Path) -> None:
    _hook_key(sm, keys, None, tmp_path)
    client = make_client(webhook_allowed_hosts=["127.0.0.1", ".hospital.example"])
    refused = client.post("/v1/batches", files=[("file", ("a.png", png(), "image/png"))], data={"callback_url": url},
                          headers=keys.submitter.headers)
    assert why in assert_problem(refused, 422, "invalid_callback_url")["detail"]
    for allowed in ("http://127.0.0.1:9/x", "https://pacs.hospital.example/hook"):
        ok = client.post("/v1/jobs", files=file_part(png()), data={"callback_url": allowed},
                         headers=keys.submitter.headers)
        assert ok.status_code == 202, ok.text
    with sm() as session:
        assert session.scalars(select(Job.webhook_url).order_by(Job.created_at)).all() == [
            "http://127.0.0.1:9/x", "https://pacs.hospital.example/hook"]


@pytest.mark.parametrize(("url", "why"), [
    ("http://localhost:8080/x", "own host"), ("http://127.0.0.1:8080/x", "own host"), ("http://[::1]/x", "own host"),
    ("http://[::ffff:127.0.0.1]/x", "own host"), ("http://0.0.0.0/x", "own host"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"), ("http://[fe80::1%25eth0]/x", "link-local"),
    ("http://224.0.0.1/x", "multicast"),
    # loopback and metadata in the short and numeric forms resolvers take as addresses
    ("http://127.1:8799/x", "own host"), ("http://2130706433:8799/x", "own host"), ("http://0x7f.1/x", "own host"),
    ("http://0/x", "own host"), ("http://169.254.43518/x", "link-local"),
])
def test_with_no_list_the_service_s_own_host_and_link_local_are_refused(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], url: str, why: str, tmp_path: Path) -> None:
    _hook_key(sm, keys, None, tmp_path)
    client = make_client()  # no FADA_WEBHOOK_ALLOWED_HOSTS
    refused = client.post("/v1/jobs", files=file_part(png()), data={"callback_url": url},
                          headers=keys.submitter.headers)
    detail = assert_problem(refused, 422, "invalid_callback_url")["detail"]
    assert why in detail and "FADA_WEBHOOK_ALLOWED_HOSTS" in detail
    ok = client.post("/v1/jobs", files=file_part(png()), data={"callback_url": "http://10.20.30.40/hook"},
                     headers=keys.submitter.headers)
    assert ok.status_code == 202, ok.text  # a private address: where hospital receivers live


def test_a_name_that_resolves_to_the_service_s_own_host_is_refused_when_sent(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], receiver: Receiver, db_url: str,
        tmp_path: Path, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = _hook_key(sm, keys, None, tmp_path)
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: real(
        "127.0.0.1" if host == "sneaky.test" else host, port, *a, **k))
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    sneaky = receiver.url.replace("127.0.0.1", "sneaky.test")  # a name, not an address; resolves to 127.0.0.1
    client = make_client()
    job_id = _submit(client, keys, callback_url=sneaky)
    succeed_job(sm, job_id)
    dispatch_once(sm, _settings(db_url, tmp_path, broker_url, webhook_allowed_hosts=[]), owner="d")
    [delivery] = client.get(f"/v1/jobs/{job_id}/deliveries", headers=keys.submitter.headers).json()
    assert "sneaky.test (127.0.0.1) is the service's own host" in delivery["tries"][0]["error"]
    assert delivery["tries"][0]["error"].startswith("InvalidTarget: ")  # not "_Unsendable: InvalidTarget: ..."
    assert not receiver.requests
    # an allowed-hosts list set after submission is applied when sending too

    def refused_by_the_list() -> bool:
        with sm() as session:
            return "not in the allowed hosts" in (session.scalar(select(Delivery.last_error)) or "")

    _dispatch_until(sm, _settings(db_url, tmp_path, broker_url, webhook_allowed_hosts=[".hospital.example"]),
                    refused_by_the_list)
    assert not receiver.requests
    _dispatch_until(sm, _settings(db_url, tmp_path, broker_url, webhook_allowed_hosts=["sneaky.test"]),
                    lambda: len(receiver.requests) == 1)
    assert verify_webhook(secret, receiver.requests[0].headers, receiver.requests[0].body)["data"]["job_id"] == job_id


def test_two_dispatchers_send_each_event_once(make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session],
                                             receiver: Receiver, db_url: str, tmp_path: Path,
                                             broker_url: str) -> None:
    _hook_key(sm, keys, receiver.url, tmp_path)
    client = make_client()
    job_ids = [_submit(client, keys) for _ in range(6)]
    for job_id in job_ids:
        succeed_job(sm, job_id)
    settings = _settings(db_url, tmp_path, broker_url)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(owner: str) -> None:
        start.wait()
        try:
            for _ in range(3):
                dispatch_once(sm, settings, owner=owner)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"dispatcher-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    sent = sorted(json.loads(r.body)["data"]["job_id"] for r in receiver.wait_for(6))
    time.sleep(0.2)
    assert sorted(json.loads(r.body)["data"]["job_id"] for r in receiver.requests) == sorted(job_ids) == sent
    with sm() as session:
        assert session.scalars(select(Delivery.status)).all() == [DeliveryStatus.delivered] * 6


def _resolve_once(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> Counter[str]:
    """``socket.getaddrinfo`` with the names in ``answers`` answered by script, once each: a
    second lookup of one fails, as a rebinding DNS server's second answer must not matter.
    Other names (the database, the receivers' address literals) resolve as usual."""
    real = socket.getaddrinfo
    asked: Counter[str] = Counter()

    def lookup(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked[host] += 1
        if asked[host] > 1:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} looked up again")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                 (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    for name in PROXY_VARIABLES:  # pinning applies where no proxy does
        monkeypatch.delenv(name, raising=False)
    return asked


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                   "no_proxy")


def test_a_webhook_goes_to_the_addresses_checked_not_to_a_second_lookup(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], receiver: Receiver, db_url: str,
        tmp_path: Path, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://hooks.test:{urlsplit(receiver.url).port}/hooks/fada"
    # ::1 first: the receiver listens on 127.0.0.1 only, so the send moves on to the next address
    asked = _resolve_once(monkeypatch, {"hooks.test": ["::1", "127.0.0.1"]})
    secret = _hook_key(sm, keys, None, tmp_path)
    client = make_client(webhook_allowed_hosts=["hooks.test"])
    job_id = _submit(client, keys, callback_url=url)
    succeed_job(sm, job_id)
    report = dispatch_once(sm, _settings(db_url, tmp_path, broker_url, webhook_allowed_hosts=["hooks.test"]), owner="d")
    assert len(report.delivered) == 1, report
    [got] = receiver.requests
    assert asked == {"hooks.test": 1}  # httpx connected to the checked address; it never asked DNS
    assert got.headers["host"] == urlsplit(url).netloc and got.path == "/hooks/fada"
    assert verify_webhook(secret, got.headers, got.body)["data"]["job_id"] == job_id
    [delivery] = client.get(f"/v1/jobs/{job_id}/deliveries", headers=keys.submitter.headers).json()
    assert delivery["url"] == url


def test_an_https_webhook_to_a_pinned_address_checks_the_certificate_against_the_url_s_host(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], db_url: str, tmp_path: Path,
        broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trust store comes from SSL_CERT_FILE (a hospital's own CA). A second host on the same
    address gets its own certificate check: the receiver keeps connections alive, and a pooled
    connection verified for hooks.test must not carry impostor.test's request."""
    server_tls, cert_pem = tls_pair("hooks.test")  # the certificate names hooks.test, not 127.0.0.1
    (tmp_path / "ca.pem").write_bytes(cert_pem)
    allowed = ["hooks.test", "impostor.test"]
    _hook_key(sm, keys, None, tmp_path)
    client = make_client(webhook_allowed_hosts=allowed)
    settings = _settings(db_url, tmp_path, broker_url, webhook_allowed_hosts=allowed)
    with running_receiver(tls=server_tls) as receiver:
        port = urlsplit(receiver.url).port
        _resolve_once(monkeypatch, {"hooks.test": ["127.0.0.1"]})
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        good = _submit(client, keys, callback_url=f"https://hooks.test:{port}/hooks/fada")
        succeed_job(sm, good)
        with httpx.Client(timeout=5) as shared:  # one client for the passes, as the dispatcher's own
            assert len(dispatch_once(sm, settings, owner="d", client=shared).delivered) == 1
            _resolve_once(monkeypatch, {"impostor.test": ["127.0.0.1"]})
            monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
            bad = _submit(client, keys, callback_url=f"https://impostor.test:{port}/hooks/fada")
            succeed_job(sm, bad)
            report = dispatch_once(sm, settings, owner="d", client=shared)
        assert not report.delivered and len(report.retrying) == 1, report
        assert [json.loads(r.body)["data"]["job_id"] for r in receiver.requests] == [good]
    [refused] = client.get(f"/v1/jobs/{bad}/deliveries", headers=keys.submitter.headers).json()
    assert "ConnectError" in refused["tries"][0]["error"] and "certificate" in refused["tries"][0]["error"]


def test_a_host_no_proxy_exempts_is_sent_to_directly(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], receiver: Receiver, db_url: str,
        tmp_path: Path, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY names a proxy that is down; NO_PROXY exempts the receiver's name. The pinned
    request must go straight to the checked address, not to the proxy (which would judge
    NO_PROXY by the address)."""
    url = f"http://hooks.test:{urlsplit(receiver.url).port}/hooks/fada"
    _resolve_once(monkeypatch, {"hooks.test": ["127.0.0.1"]})
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "hooks.test")
    _hook_key(sm, keys, None, tmp_path)
    client = make_client(webhook_allowed_hosts=["hooks.test"])
    job_id = _submit(client, keys, callback_url=url)
    succeed_job(sm, job_id)
    report = dispatch_once(sm, _settings(db_url, tmp_path, broker_url, webhook_allowed_hosts=["hooks.test"]),
                           owner="d")
    assert len(report.delivered) == 1, report
    assert receiver.requests[0].headers["host"] == urlsplit(url).netloc


def test_a_non_ascii_host_goes_by_its_idna_name(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], receiver: Receiver, db_url: str,
        tmp_path: Path, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A callback host outside ASCII is resolved, sent in Host and checked in TLS by its IDNA
    form (it escaped as UnicodeEncodeError and aborted every dispatch pass)."""
    port = urlsplit(receiver.url).port
    asked = _resolve_once(monkeypatch, {"xn--bcher-kva.test": ["127.0.0.1"]})
    allowed = ["bücher.test"]
    _hook_key(sm, keys, None, tmp_path)
    client = make_client(webhook_allowed_hosts=allowed)
    job_id = _submit(client, keys, callback_url=f"http://bücher.test:{port}/hooks/fada")
    succeed_job(sm, job_id)
    report = dispatch_once(sm, _settings(db_url, tmp_path, broker_url, webhook_allowed_hosts=allowed), owner="d")
    assert len(report.delivered) == 1, report
    assert receiver.requests[0].headers["host"] == f"xn--bcher-kva.test:{port}" and asked == {"xn--bcher-kva.test": 1}


def test_an_unexpected_error_is_one_failed_try_not_a_lost_pass(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], receiver: Receiver, db_url: str,
        tmp_path: Path, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever goes wrong building one delivery is recorded as its failed try, and the other
    deliveries of the pass are sent (an escaping error lost the pass and left every claimed
    delivery untried until its lease ran out)."""
    _hook_key(sm, keys, receiver.url, tmp_path)
    client = make_client()
    first, second = _submit(client, keys), _submit(client, keys)
    real = send_module.webhook_headers

    def flaky(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        if first.encode() in body:
            raise LookupError("simulated surprise")
        return real(secret, msg_id, timestamp, body)

    monkeypatch.setattr(send_module, "webhook_headers", flaky)
    for job_id in (first, second):
        succeed_job(sm, job_id)
    report = dispatch_once(sm, _settings(db_url, tmp_path, broker_url), owner="d")
    assert len(report.delivered) == 1 and len(report.retrying) == 1, report
    [tried] = client.get(f"/v1/jobs/{first}/deliveries", headers=keys.submitter.headers).json()
    assert "unexpected LookupError: simulated surprise" in tried["tries"][0]["error"]


@pytest.mark.parametrize(("answers", "pinned", "refused"), [
    (["10.1.2.3"], "http://10.1.2.3:8080/x?a=1", None),
    (["fd00::7", "10.1.2.3"], "http://[fd00::7]:8080/x?a=1", None),
    (["10.1.2.3", "169.254.169.254"], None, "hooks.example (169.254.169.254) is a link-local address"),
    (["127.0.0.1"], None, "hooks.example (127.0.0.1) is the service's own host"),
])
def test_every_address_a_name_resolves_to_is_checked_and_the_first_is_pinned(
        monkeypatch: pytest.MonkeyPatch, answers: list[str], pinned: str | None, refused: str | None) -> None:
    _resolve_once(monkeypatch, {"hooks.example": answers})
    url = "http://hooks.example:8080/x?a=1"
    if refused:
        with pytest.raises(InvalidTarget, match=re.escape(refused)):
            pin_target(url, [])
        return
    target = pin_target(url, [])
    assert target.url_for(target.addresses[0]) == pinned and target.host_header() == "hooks.example:8080"
    assert target.addresses == tuple(answers) and target.extensions() == {}


def test_through_a_proxy_from_the_environment_the_webhook_goes_by_name(
        make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session], receiver: Receiver, db_url: str,
        tmp_path: Path, broker_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With HTTP_PROXY set, the proxy connects (the receiver plays it here and sees the request
    in absolute form): the URL keeps its name, as NO_PROXY and the proxy's own rules expect.
    The name is still resolved and checked once before sending."""
    url = "http://hooks.test:8080/hooks/fada"
    asked = _resolve_once(monkeypatch, {"hooks.test": ["10.1.2.3"]})
    monkeypatch.setenv("HTTP_PROXY", receiver.url.removesuffix("/hooks/fada"))
    secret = _hook_key(sm, keys, None, tmp_path)
    client = make_client(webhook_allowed_hosts=[])
    job_id = _submit(client, keys, callback_url=url)
    succeed_job(sm, job_id)
    report = dispatch_once(sm, _settings(db_url, tmp_path, broker_url, webhook_allowed_hosts=[]), owner="d")
    assert len(report.delivered) == 1, report
    [got] = receiver.requests
    assert got.path == url and got.headers["host"] == "hooks.test:8080" and asked == {"hooks.test": 1}
    assert verify_webhook(secret, got.headers, got.body)["data"]["job_id"] == job_id
    # a host NO_PROXY exempts goes to its checked address, as httpx would send it directly
    proxy = receiver.url.removesuffix("/hooks/fada")
    _resolve_once(monkeypatch, {"exempt.test": ["10.1.2.3"], "other.test": ["10.1.2.4"]})
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("NO_PROXY", "exempt.test")
    assert pin_target("http://exempt.test/x", []).via_proxy is False
    assert pin_target("http://other.test/x", []).via_proxy is True


def test_other_readers_see_a_webhook_url_without_its_query(make_client: ClientFactory, keys: Keys,
                                                           sm: sessionmaker[Session], receiver: Receiver, db_url: str,
                                                           tmp_path: Path, broker_url: str) -> None:
    """Receivers often keep a token in the URL's query: the job's own key and admins see it,
    reviewers and QA see where the events went, not the token."""
    _hook_key(sm, keys, None, tmp_path)
    client = make_client(webhook_allowed_hosts=LOCAL)
    url = receiver.url + "?token=s3cret"
    job_id = _submit(client, keys, callback_url=url)
    succeed_job(sm, job_id)
    dispatch_once(sm, _settings(db_url, tmp_path, broker_url), owner="d")
    assert receiver.wait_for(1)[0].path.endswith("?token=s3cret")  # the receiver got it whole
    seen = {role: client.get(f"/v1/jobs/{job_id}/deliveries", headers=getattr(keys, role).headers).json()[0]["url"]
            for role in ("submitter", "admin", "qa", "reviewer")}
    assert seen == {"submitter": url, "admin": url, "qa": receiver.url + "?(hidden)",
                    "reviewer": receiver.url + "?(hidden)"}
