"""The gateway while a peer is out: a PostgreSQL database that refuses connections (as during a
restart or failover) and a Redis broker that hangs (stopped, not down: it accepts connections
and never answers). The database's outage is a 503 with ``Retry-After`` that the clients retry,
not a 500 that they give up on; a hung broker costs a submission seconds, not the gateway.
And the webhook dispatcher while the database goes away mid-pass."""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import Pool

from api.app import create_app
from cli.client import FadaClient, RetryPolicy
from cli.webhooks import verify_webhook
from services import queue
from services.keys import configure_webhook
from services.notify import dispatch as dispatch_module
from services.notify import dispatch_once
from services.notify.sealing import secret_box
from services.notify.send import Attempt
from shared.db.migrate import upgrade
from shared.db.models import Delivery, DeliveryStatus, Job, JobStatus
from tests.fixtures_db import connections_refused, throwaway_postgres_database
from tests.ingest.builders import encode, noise_rgb
from tests.webhook_receiver import running_receiver

from .conftest import Keys, close_app, make_keys, make_settings, open_sessions
from .helpers import assert_problem, file_part, png, succeed_job

# --- the database refuses connections -------------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    with throwaway_postgres_database(prefix="fada_test_outage_") as url:
        upgrade(url)
        yield url


@pytest.fixture
def outage_app(pg_url: str, tmp_path: Path, broker_url: str) -> Iterator[tuple[FastAPI, Keys, sessionmaker[Session]]]:
    sessions = open_sessions(pg_url)
    sm = next(sessions)
    app = create_app(make_settings(pg_url, tmp_path, broker_url))
    yield app, make_keys(sm), sm
    close_app(app)
    sessions.close()


def jobs_in(sm: sessionmaker[Session]) -> int:
    with sm() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def test_a_database_outage_is_a_503_with_retry_after_and_a_retry_stores_the_job_once(
        outage_app: tuple[FastAPI, Keys, sessionmaker[Session]], pg_url: str, serve: Callable[[FastAPI], str],
        caplog: pytest.LogCaptureFixture) -> None:
    app, keys, sm = outage_app
    base = serve(app)
    auth = keys.submitter.headers
    with httpx.Client(base_url=base, timeout=30) as http:
        done = http.post("/v1/jobs", files=file_part(png(1)), headers=auth)
        assert done.status_code == 202, done.text
        job_id = done.json()["id"]
        idempotency = {**auth, "Idempotency-Key": str(uuid.uuid4())}
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="api.middleware"), connections_refused(pg_url):
            for response in (http.post("/v1/jobs", files=file_part(png(2)), headers=idempotency),
                             http.get(f"/v1/jobs/{job_id}", headers=auth),
                             http.get("/v1/jobs", headers=auth)):
                body = assert_problem(response, 503, "database_unavailable")
                assert response.headers["retry-after"] == "5" and "Idempotency-Key" in body["detail"]
                assert response.headers["x-request-id"]
            assert http.get("/healthz").status_code == 200  # the process is up
            assert_problem(http.get("/readyz"), 503, "not_ready")
            # The process's own metrics still come, saying the database did not answer.
            scraped = http.get("/metrics")
            assert scraped.status_code == 200 and "fada_database_up 0.0" in scraped.text
            assert "fada_http_requests_total" in scraped.text and "fada_jobs{" not in scraped.text
        # One warning line per refused request, no traceback (a traceback per request would bury
        # the one that matters in an outage of a minute).
        middleware = [r for r in caplog.records if r.name == "api.middleware"]
        assert middleware and all(r.exc_info is None for r in middleware), [r.getMessage() for r in middleware]
        assert any("database unavailable on POST /v1/jobs" in r.getMessage() for r in middleware)

        assert "fada_database_up 1.0" in http.get("/metrics").text
        again = http.post("/v1/jobs", files=file_part(png(2)), headers=idempotency)
        assert again.status_code == 202, again.text
        replay = http.post("/v1/jobs", files=file_part(png(2)), headers=idempotency)
        assert replay.status_code == 200 and replay.json()["id"] == again.json()["id"]
    assert jobs_in(sm) == 2


def test_a_full_database_is_a_503_that_says_so_and_a_retry_stores_the_job_once(
        sqlite_db_url: str, tmp_path: Path, broker_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """SQLite at its size limit (PRAGMA max_page_count: the SQLITE_FULL a full disk gives, as
    seen with ``fada serve`` on a filled 8 MB tmpfs). Reads still work, so only the answer to a
    write can tell: a 503 that names the cause (not "cannot be reached"), a longer Retry-After,
    an ERROR line for the operator; nothing stored. Once there is room, the retry with the same
    Idempotency-Key stores the job once."""
    sessions = open_sessions(sqlite_db_url)
    sm = next(sessions)
    keys = make_keys(sm)
    full = {"on": False}

    def size_limit(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # 1 page means "no larger than now" (SQLite never caps below the file's size)
        dbapi_connection.execute(f"PRAGMA max_page_count = {1 if full['on'] else 1_073_741_823}")

    event.listen(Pool, "checkout", size_limit)
    app = create_app(make_settings(sqlite_db_url, tmp_path, broker_url))
    headers = {**keys.submitter.headers, "Idempotency-Key": str(uuid.uuid4())}
    image = encode(noise_rgb(200, 150, seed=5), "PNG")  # tens of pages: it cannot fit in a free one
    try:
        with TestClient(app) as http:
            full["on"] = True
            with caplog.at_level(logging.ERROR, logger="api.middleware"):
                refused = http.post("/v1/jobs", files=file_part(image), headers=headers)
            body = assert_problem(refused, 503, "database_full")
            assert refused.headers["retry-after"] == "60" and "disk space" in body["detail"]
            assert any("out of disk space on POST /v1/jobs" in r.getMessage() and r.exc_info is None
                       for r in caplog.records), [r.getMessage() for r in caplog.records]
            assert http.get("/v1/jobs?limit=5", headers=keys.submitter.headers).status_code == 200  # reads work
            assert jobs_in(sm) == 0
            full["on"] = False
            stored = http.post("/v1/jobs", files=file_part(image), headers=headers)
            assert stored.status_code == 202, stored.text
            replay = http.post("/v1/jobs", files=file_part(image), headers=headers)
            assert replay.status_code == 200 and replay.json()["id"] == stored.json()["id"]
            assert jobs_in(sm) == 1
    finally:
        event.remove(Pool, "checkout", size_limit)
        close_app(app)
        sessions.close()


def test_the_client_waits_out_a_short_database_outage(
        outage_app: tuple[FastAPI, Keys, sessionmaker[Session]], pg_url: str, serve: Callable[[FastAPI], str]) -> None:
    app, keys, sm = outage_app
    base = serve(app)
    policy = RetryPolicy(retries=8, backoff=0.2, retry_after_cap=0.5)  # a short test, not 5 s per try
    results: list[dict[str, Any]] = []
    with FadaClient(base, keys.submitter.secret, policy=policy) as client:
        with connections_refused(pg_url):
            worker = threading.Thread(target=lambda: results.append(client.submit(png(3), external_id="outage")))
            worker.start()
            worker.join(1.5)  # the client is retrying when the database comes back
            assert worker.is_alive(), "the client did not wait for the database"
        worker.join(30)
    assert not worker.is_alive() and len(results) == 1, "the client gave up during the outage"
    assert results[0]["status"] == "queued" and jobs_in(sm) == 1


def test_a_database_gone_mid_delivery_costs_the_pass_its_records_not_its_sends(
        outage_app: tuple[FastAPI, Keys, sessionmaker[Session]], pg_url: str, tmp_path: Path, broker_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL refuses connections from just after the dispatcher claimed a webhook (a
    restart). The webhook still goes out, stamped by the database's time read at the claim;
    the pass cannot record it and fails. Once the database is back and the claim's lease has
    run out, the next pass sends it again under the same webhook-id (receivers deduplicate by
    it) and records it delivered."""
    app, keys, sm = outage_app
    settings = make_settings(pg_url, tmp_path, broker_url, webhook_allowed_hosts=["127.0.0.1"],
                             notify_timeout_seconds=0.5)  # a lease of 6.5 s
    outage = ExitStack()
    real_send = dispatch_module.send

    def claimed_then_gone(*args: Any, **kwargs: Any) -> Attempt:
        outage.enter_context(connections_refused(pg_url))
        return real_send(*args, **kwargs)

    with running_receiver() as receiver:
        with sm.begin() as session:
            _, secret = configure_webhook(session, keys.submitter.id, url=receiver.url, allowed_hosts=["127.0.0.1"],
                                          box=secret_box(settings, create=True))
        assert secret is not None
        with TestClient(app) as client:
            done = client.post("/v1/jobs", files=file_part(png(4)), headers=keys.submitter.headers)
            assert done.status_code == 202, done.text
        job_id = done.json()["id"]
        succeed_job(sm, job_id)
        monkeypatch.setattr(dispatch_module, "send", claimed_then_gone)
        try:
            with pytest.raises(OperationalError):
                dispatch_once(sm, settings, owner="d")
            [sent] = receiver.wait_for(1)
            event = verify_webhook(secret, sent.headers, sent.body)  # signed and stamped within 5 minutes of now
            assert event["type"] == "job.succeeded" and event["data"]["job_id"] == job_id
        finally:
            outage.close()
        monkeypatch.undo()
        time.sleep(7)
        report = dispatch_once(sm, settings, owner="d")
        assert report.delivered == [sent.headers["webhook-id"]], report
        again = receiver.wait_for(2)[1]
        assert again.headers["webhook-id"] == sent.headers["webhook-id"] and again.body == sent.body
    with sm() as session:
        [delivery] = session.scalars(select(Delivery)).all()
        assert delivery.status is DeliveryStatus.delivered and delivery.attempts == 1


# --- the broker hangs -------------------------------------------------------------------------------


@pytest.fixture
def hung_redis() -> Iterator[tuple[str, socket.socket]]:
    """A Redis URL whose server takes connections (the kernel completes the handshake) and never
    answers, as a Redis stopped with SIGSTOP or a peer behind a dead NAT does."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    try:
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0", listener
    finally:
        listener.close()


@pytest.fixture
def app_on(pg_url: str, tmp_path: Path) -> Iterator[Callable[..., tuple[FastAPI, Keys, sessionmaker[Session]]]]:
    """``app_on(broker_url, **settings)``: an app on the test's PostgreSQL database."""
    sessions = open_sessions(pg_url)
    sm = next(sessions)
    keys = make_keys(sm)
    apps: list[FastAPI] = []

    def _make(broker: str, **overrides: Any) -> tuple[FastAPI, Keys, sessionmaker[Session]]:
        apps.append(create_app(make_settings(pg_url, tmp_path, broker, **overrides)))
        return apps[-1], keys, sm

    yield _make
    for app in apps:
        close_app(app)
    sessions.close()


def test_a_hung_broker_costs_a_submission_seconds_and_loses_no_job(
        hung_redis: tuple[str, socket.socket], app_on: Callable[..., tuple[FastAPI, Keys, sessionmaker[Session]]],
        serve: Callable[[FastAPI], str]) -> None:
    app, keys, sm = app_on(hung_redis[0], broker_timeout_seconds=1.0)
    with httpx.Client(base_url=serve(app), timeout=60) as http:
        # Answered once the publish gave up; the job is committed and queued for the sweeper.
        done = http.post("/v1/jobs", files=file_part(png(4)), headers=keys.submitter.headers)
        assert done.status_code == 202, done.text
        job = http.get(f"/v1/jobs/{done.json()['id']}", headers=keys.submitter.headers).json()
        assert job["status"] == JobStatus.queued
        # /readyz names the broker within its timeouts instead of hanging with it.
        ready = assert_problem(http.get("/readyz"), 503, "not_ready")
        assert ready["checks"]["broker"].startswith("unreachable") and ready["checks"]["database"] == "ok"
    assert jobs_in(sm) == 1


def _stow_body(count: int) -> tuple[bytes, str]:
    """A multipart/related body of ``count`` copies of pydicom's ultrasound, each its own instance."""
    boundary, parts = uuid.uuid4().hex, []
    for _ in range(count):
        ds = pydicom.dcmread(str(get_testdata_file("examples_palette.dcm")))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        parts.append(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + buffer.getvalue()
                     + b"\r\n")
    return (b"".join(parts) + b"--" + boundary.encode() + b"--\r\n",
            f'multipart/related; type="application/dicom"; boundary={boundary}')


def test_a_request_of_many_jobs_tries_a_hung_broker_once(
        hung_redis: tuple[str, socket.socket], app_on: Callable[..., tuple[FastAPI, Keys, sessionmaker[Session]]],
        serve: Callable[[FastAPI], str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch or a STOW-RS push stops publishing at the first refusal: each try costs about
    twice the broker timeout, and a batch of 50 tried them all. Every job is stored, queued for
    the sweeper."""
    tries: list[str] = []
    real = queue.enqueue_job

    def counted(app: Any, job_id: str) -> bool:
        tries.append(job_id)
        return real(app, job_id)

    monkeypatch.setattr(queue, "enqueue_job", counted)
    app, keys, sm = app_on(hung_redis[0], broker_timeout_seconds=0.5)
    with httpx.Client(base_url=serve(app), timeout=60) as http:
        batch = http.post("/v1/batches", headers=keys.submitter.headers,
                          files=[("file", (f"{seed}.png", png(seed), "image/png")) for seed in range(4)])
        assert batch.status_code == 202, batch.text
        assert len(tries) == 1
        body, content_type = _stow_body(3)
        pushed = http.post("/dicomweb/studies", content=body,
                           headers={**keys.submitter.headers, "Content-Type": content_type})
        assert pushed.status_code == 200, pushed.text
        assert len(tries) == 2
    with sm() as session:
        assert list(session.scalars(select(Job.status))) == [JobStatus.queued] * 7
        assert list(session.scalars(select(Job.unpublished))) == [True] * 7  # the sweeper's next pass sends them


def test_healthz_answers_while_every_worker_thread_waits_on_a_hung_broker(
        hung_redis: tuple[str, socket.socket], app_on: Callable[..., tuple[FastAPI, Keys, sessionmaker[Session]]],
        serve: Callable[[FastAPI], str]) -> None:
    url, listener = hung_redis
    app, keys, sm = app_on(url, broker_timeout_seconds=5.0)
    base = serve(app)
    answers: list[int] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as own:
            status = own.post("/v1/jobs", files=file_part(png(100 + i)), headers=keys.submitter.headers).status_code
        with lock:
            answers.append(status)

    # More submissions at once than the gateway has worker threads (40), each waiting on the broker.
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(45)]
    for thread in threads:
        thread.start()
    try:
        threading.Event().wait(3.0)  # the submissions reach the broker and wait there
        assert not answers, "the broker did not hang the submissions: the test proves nothing"
        assert httpx.get(f"{base}/healthz", timeout=2).status_code == 200
    finally:
        listener.close()  # the broker goes down for good: the waiting publishes fail at once
        for thread in threads:
            thread.join(120)
    assert sorted(answers) == [202] * 45 and jobs_in(sm) == 45
