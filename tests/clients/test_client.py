"""The Python client (cli/client.py) against a real uvicorn server: submissions, idempotent
retries after a lost answer, Retry-After, typed errors, wait(); the async client likewise."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from cli.client import (
    ApiError,
    AsyncFadaClient,
    Conflict,
    FadaClient,
    Forbidden,
    InvalidRequest,
    NotFound,
    RetryPolicy,
    TransportError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from shared.db.models import Job
from tests.api.conftest import Keys
from tests.api.helpers import count, png, succeed_job, ultrasound_dicom

FAST = RetryPolicy(retries=3, backoff=0.01, backoff_cap=0.05)


class DropAfterForward(httpx.BaseTransport):
    """Forwards every request; the first ``drops`` POSTs lose their answer (ReadError), as a
    connection cut after the server stored the job would."""

    def __init__(self, drops: int = 1) -> None:
        self.inner = httpx.HTTPTransport()
        self.drops = drops
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST":
            self.keys.append(request.headers.get("Idempotency-Key"))
            if self.drops:
                self.drops -= 1
                response.read()
                response.close()
                raise httpx.ReadError("connection reset after the request was sent", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncDropAfterForward(httpx.AsyncBaseTransport):
    def __init__(self, drops: int = 1) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.drops = drops
        self.keys: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST":
            self.keys.append(request.headers.get("Idempotency-Key"))
            if self.drops:
                self.drops -= 1
                await response.aread()
                await response.aclose()
                raise httpx.ReadError("connection reset after the request was sent", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


class BusyThenForward(httpx.BaseTransport):
    """Answers 503 with ``Retry-After`` ``busy`` times, then forwards."""

    def __init__(self, busy: int, retry_after: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.busy, self.retry_after = busy, retry_after
        self.times: list[float] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.times.append(time.monotonic())
        if self.busy:
            self.busy -= 1
            return httpx.Response(503, headers={"Retry-After": self.retry_after, "Content-Type":
                                                "application/problem+json"},
                                  json={"type": "urn:x:busy", "title": "Service Unavailable", "status": 503,
                                        "detail": "busy", "code": "busy"})
        return self.inner.handle_request(request)


def test_submit_png_path_and_dicom_bytes(url: str, keys: Keys, tmp_path: Path, sm: sessionmaker[Session]) -> None:
    image = tmp_path / "scan.png"
    image.write_bytes(png(seed=1))
    with FadaClient(url, keys.submitter.secret) as fada:
        job = fada.submit(image, external_id="ACC-1")
        assert job["status"] == "queued" and job["external_id"] == "ACC-1" and job["mode"] == "autonomous"
        dicom = fada.submit(ultrasound_dicom(), mode="hitl", frame=0)
        assert dicom["mode"] == "hitl"
        assert fada.get_job(job["id"])["id"] == job["id"]
        batch = fada.submit_batch([png(seed=2), png(seed=3)])
        assert len(batch["jobs"]) == 2
        assert fada.get_batch(batch["id"])["total"] == 2
        assert {j["id"] for j in fada.list_jobs(limit=10)["items"]} >= {job["id"], dicom["id"]}
    assert count(sm, Job) == 4


def test_defaults_from_the_environment(url: str, keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FADA_URL", url + "/")
    monkeypatch.setenv("FADA_API_KEY", keys.submitter.secret)
    with FadaClient() as fada:
        assert fada.url == url
        assert fada.submit(png())["status"] == "queued"


def test_a_lost_answer_is_retried_with_the_same_key_and_makes_one_job(
        url: str, keys: Keys, sm: sessionmaker[Session]) -> None:
    transport = DropAfterForward(drops=2)
    with FadaClient(url, keys.submitter.secret, policy=FAST, transport=transport) as fada:
        job = fada.submit(png(seed=5))
    assert len(transport.keys) == 3 and len(set(transport.keys)) == 1 and transport.keys[0]
    assert count(sm, Job) == 1
    with sm() as session:
        assert session.get(Job, job["id"]) is not None


def test_the_caller_s_idempotency_key_is_sent_and_a_reuse_is_refused(url: str, keys: Keys) -> None:
    with FadaClient(url, keys.submitter.secret) as fada:
        first = fada.submit(png(seed=6), idempotency_key="k-1")
        assert fada.submit(png(seed=6), idempotency_key="k-1")["id"] == first["id"]
        with pytest.raises(InvalidRequest) as info:
            fada.submit(png(seed=7), idempotency_key="k-1")
    assert info.value.status == 422 and info.value.code == "idempotency_key_reused"


def test_503_retry_after_is_honoured(url: str, keys: Keys) -> None:
    transport = BusyThenForward(busy=2, retry_after="0.3")
    with FadaClient(url, keys.submitter.secret, policy=FAST, transport=transport) as fada:
        start = time.monotonic()
        job = fada.submit(png(seed=8))
        elapsed = time.monotonic() - start
    assert job["status"] == "queued"
    assert len(transport.times) == 3
    gaps = [b - a for a, b in zip(transport.times, transport.times[1:], strict=False)]
    assert all(gap >= 0.29 for gap in gaps), gaps  # the backoff alone would be ~0.01 s
    assert elapsed >= 0.6


def test_503_after_the_retries_is_unavailable(url: str, keys: Keys) -> None:
    transport = BusyThenForward(busy=10, retry_after="0")
    with FadaClient(url, keys.submitter.secret, policy=FAST, transport=transport) as fada, \
            pytest.raises(Unavailable) as info:
        fada.get_job("x")
    assert info.value.status == 503 and info.value.problem["code"] == "busy"
    assert len(transport.times) == FAST.retries + 1


def test_unreachable_service_is_a_transport_error() -> None:
    with FadaClient("http://127.0.0.1:9", "k", policy=FAST) as fada, pytest.raises(TransportError):
        fada.get_job("x")


def _problem(error: ApiError, status: int) -> dict[str, Any]:
    assert error.status == status
    assert {"type", "title", "status", "detail", "code"} <= error.problem.keys()
    assert error.problem["status"] == status and error.code == error.problem["code"]
    assert error.detail == error.problem["detail"]
    return error.problem


def test_typed_errors_carry_the_problem_document(url: str, keys: Keys) -> None:
    with FadaClient(url, "fada_not_a_key", policy=FAST) as anonymous, pytest.raises(Unauthorized) as e401:
        anonymous.get_job("x")
    _problem(e401.value, 401)
    with FadaClient(url, keys.reviewer.secret) as reviewer, pytest.raises(Forbidden) as e403:
        reviewer.submit(png())
    _problem(e403.value, 403)
    with FadaClient(url, keys.submitter.secret) as fada:
        with pytest.raises(NotFound) as e404:
            fada.get_job("00000000-0000-0000-0000-000000000000")
        assert _problem(e404.value, 404)["code"] == "job_not_found"
        job = fada.submit(png())
        with pytest.raises(Conflict) as e409:
            fada.result(job["id"])
        assert _problem(e409.value, 409)["code"] == "result_not_ready"
        with pytest.raises(InvalidRequest) as e415:
            fada.submit(b"just some text, not an image")
        _problem(e415.value, 415)
        with pytest.raises(InvalidRequest) as e422:
            fada.submit(png(), external_id="x" * 200)
        _problem(e422.value, 422)


def _succeed_later(sm: sessionmaker[Session], job_id: str, delay: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        succeed_job(sm, job_id)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_wait_returns_once_the_result_is_stored(url: str, keys: Keys, sm: sessionmaker[Session]) -> None:
    with FadaClient(url, keys.submitter.secret) as fada:
        job = fada.submit(png(seed=9))
        with pytest.raises(WaitTimeout) as timeout:
            fada.wait(job["id"], timeout=0.3, interval=0.05)
        assert timeout.value.job["status"] == "queued"
        thread = _succeed_later(sm, job["id"], 0.5)
        start = time.monotonic()
        done = fada.wait(job["id"], timeout=20, interval=0.05, max_interval=0.2)
        thread.join()
        assert done["status"] == "succeeded" and time.monotonic() - start < 5
        assert fada.result(job["id"])["job_id"] == job["id"]
        assert fada.coco(job["id"])["images"][0]["id"] == job["id"]


def test_async_submit_retry_and_wait(url: str, keys: Keys, sm: sessionmaker[Session]) -> None:
    async def scenario() -> tuple[dict[str, Any], AsyncDropAfterForward]:
        transport = AsyncDropAfterForward(drops=1)
        async with AsyncFadaClient(url, keys.submitter.secret, policy=FAST, transport=transport) as fada:
            job = await fada.submit(png(seed=10))
            thread = _succeed_later(sm, job["id"], 0.4)
            done = await fada.wait(job["id"], timeout=20, interval=0.05, max_interval=0.2)
            thread.join()
            assert (await fada.result(job["id"]))["job_id"] == job["id"]
            with pytest.raises(NotFound):
                await fada.get_job("00000000-0000-0000-0000-000000000000")
            return done, transport

    done, transport = asyncio.run(scenario())
    assert done["status"] == "succeeded"
    assert len(transport.keys) == 2 and transport.keys[0] == transport.keys[1]
    assert count(sm, Job) == 1
