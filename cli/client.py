"""A Python client of the FADA Serve HTTP API v1 (``/work/shared/spec/api-v1.md``).

Two clients with the same methods: :class:`FadaClient` (blocking) and :class:`AsyncFadaClient`
(``async``/``await``). Both run the same request-building and answer-parsing code: every
operation is written once as a generator that *yields* what it needs done (send this request,
sleep this long) and receives the outcome; each client only drives those generators with its
own I/O (``httpx.Client`` or ``httpx.AsyncClient``, ``time.sleep`` or ``asyncio.sleep``).

Retries: connection errors, 429 and 503 are retried with exponential backoff (capped), waiting
what a ``Retry-After`` header asks where there is one. Submissions always carry an
``Idempotency-Key`` (a fresh uuid4 unless the caller gives one) and keep it across retries, so a
retry after a lost answer returns the job the server stored instead of creating a second one.
Requests that are not safe to repeat (``POST`` of a review) are retried only when the request
never reached the server (connect errors) or the server refused it (429/503).

Errors are typed: :class:`FadaError` is the base; :class:`ApiError` (and its subclasses per
status) carries the status, the problem document's ``code`` and ``detail``, and the whole
document in ``problem``.

Receivers of the service's webhooks check them with :func:`verify_webhook` (re-exported from
``cli.webhooks``, which needs only the standard library).

The service and key default to ``FADA_URL`` and ``FADA_API_KEY``::

    with FadaClient() as fada:
        job = fada.submit("scan.dcm", mode="hitl")
        job = fada.wait(job["id"], timeout=300)
        document = fada.result(job["id"])
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import random
import time
import uuid
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

# Re-exported: the client's public surface (this module's names) includes the receivers' helper.
# cli/webhooks.py itself stays stdlib-only, so a receiver can import it without httpx.
from cli.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "DEFAULT_URL", "FINAL_STATUSES", "ApiError", "AsyncFadaClient", "Conflict", "FadaClient", "FadaError", "Forbidden",
    "Gone", "InvalidRequest", "NotFound", "RetryPolicy", "TransportError", "Unauthorized", "Unavailable", "WaitTimeout",
    "WebhookVerificationError", "verify_webhook",
]

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
# wait() returns at a final status, or when a HITL job waits for its reviewer
WAIT_STOP_STATUSES = FINAL_STATUSES | {"awaiting_review"}

Mode = Literal["autonomous", "hitl"]
FileInput = str | os.PathLike[str] | bytes
T = TypeVar("T")


# --- errors -------------------------------------------------------------------------------------


class FadaError(Exception):
    """Base of every error this client raises."""


class TransportError(FadaError):
    """The service could not be reached or the exchange broke (after the retries, where the
    request was safe to retry); ``__cause__`` is the ``httpx`` exception."""


class WaitTimeout(FadaError, TimeoutError):
    """``wait()`` ran out of time; ``job`` is the last job resource read."""

    def __init__(self, message: str, job: dict[str, Any]) -> None:
        super().__init__(message)
        self.job = job


class ApiError(FadaError):
    """The service answered with an error: ``status``, the problem document's ``code`` and
    ``detail``, and the whole document in ``problem`` (``{}`` when the body was not JSON)."""

    def __init__(self, status: int, problem: dict[str, Any], response: httpx.Response | None = None) -> None:
        self.status = status
        self.problem = problem
        self.code: str | None = problem.get("code") if isinstance(problem.get("code"), str) else None
        detail = problem.get("detail")
        self.detail: str = str(detail) if detail else (response.reason_phrase if response is not None else "")
        self.response = response
        super().__init__(f"{status} {self.code or ''}: {self.detail}".replace("  ", " "))


class Unauthorized(ApiError):
    """401: missing, unknown or revoked API key."""


class Forbidden(ApiError):
    """403: the key's role may not do this."""


class NotFound(ApiError):
    """404."""


class Conflict(ApiError):
    """409: e.g. no result yet, a second review of the same dimension, cancel of a running job."""


class Gone(ApiError):
    """410: the retention policy deleted the job's image (its results remain)."""


class InvalidRequest(ApiError):
    """413 (too large), 415 (not an image), 422 (undecodable, bad fields, idempotency key reused)."""


class Unavailable(ApiError):
    """429 or 503, still so after the retries."""


_ERRORS: dict[int, type[ApiError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone,
                                      413: InvalidRequest, 415: InvalidRequest, 422: InvalidRequest,
                                      429: Unavailable, 503: Unavailable}


def error_for(response: httpx.Response) -> ApiError:
    """The typed error for an error answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    problem: dict[str, Any] = body if isinstance(body, dict) else {}
    if not problem and response.text:
        problem = {"detail": response.text[:500].strip()}
    return _ERRORS.get(response.status_code, ApiError)(response.status_code, problem, response)


# --- retries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """``retries`` more tries after the first; the n-th pause is ``backoff * 2**n`` seconds
    (plus up to 10 % jitter), at most ``backoff_cap``; a ``Retry-After`` header is followed
    up to ``retry_after_cap`` seconds."""

    retries: int = 4
    backoff: float = 0.5
    backoff_cap: float = 10.0
    retry_after_cap: float = 60.0
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))

    def pause(self, attempt: int, response: httpx.Response | None = None) -> float:
        if response is not None:
            asked = retry_after(response)
            if asked is not None:
                return min(asked, self.retry_after_cap)
        base = min(self.backoff * 2 ** attempt, self.backoff_cap)
        return base + random.uniform(0, base / 10)


def retry_after(response: httpx.Response) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


# --- the shared operations (sans I/O) -----------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] | None = None
    data: Mapping[str, str] | None = None
    files: Sequence[tuple[str, tuple[str, bytes, str]]] | None = None
    json: Any = None
    # True: repeating it cannot do anything twice (GET, PUT, a submission with its key)
    idempotent: bool = True


@dataclass(frozen=True)
class _Sleep:
    seconds: float


_Action = _Request | _Sleep
_Outcome = httpx.Response | httpx.TransportError | None
_Op = Generator[_Action, _Outcome, T]


def _exchange(request: _Request, policy: RetryPolicy) -> _Op[httpx.Response]:
    """Send ``request`` with retries; return the successful answer, raise the typed error."""
    attempt = 0
    while True:
        outcome = yield request
        if isinstance(outcome, httpx.TransportError):
            never_sent = isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout)
            if attempt >= policy.retries or not (request.idempotent or never_sent):
                raise TransportError(f"{request.method} {request.path}: {type(outcome).__name__}: {outcome}") \
                    from outcome
            pause = policy.pause(attempt)
        else:
            assert isinstance(outcome, httpx.Response)
            if outcome.status_code < 400:
                return outcome
            if outcome.status_code not in policy.retry_statuses or attempt >= policy.retries:
                raise error_for(outcome)
            pause = policy.pause(attempt, outcome)
        attempt += 1
        yield _Sleep(pause)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ApiError(response.status_code, {"detail": f"the answer is not JSON: {response.text[:200]!r}"},
                       response) from exc


def _read(data: FileInput) -> tuple[str, bytes]:
    if isinstance(data, bytes):
        return "upload", data
    path = Path(data)
    return path.name, path.read_bytes()


def _fields(mode: Mode, external_id: str | None, frame: int | None, callback_url: str | None) -> dict[str, str]:
    fields: dict[str, str] = {"mode": mode}
    if external_id is not None:
        fields["external_id"] = external_id
    if frame is not None:
        fields["frame"] = str(frame)
    if callback_url is not None:
        fields["callback_url"] = callback_url
    return fields


def _submit(policy: RetryPolicy, files: Sequence[FileInput], path: str, mode: Mode, external_id: str | None,
            frame: int | None, idempotency_key: str | None, callback_url: str | None) -> _Op[dict[str, Any]]:
    parts = [("file", (name, content, "application/octet-stream")) for name, content in map(_read, files)]
    key = idempotency_key or str(uuid.uuid4())  # one key for every try of this submission
    request = _Request("POST", path, headers={"Idempotency-Key": key},
                       data=_fields(mode, external_id, frame, callback_url), files=parts)
    response = yield from _exchange(request, policy)
    answer: dict[str, Any] = _json(response)
    return answer


def _get(policy: RetryPolicy, path: str, params: Mapping[str, Any] | None = None) -> _Op[Any]:
    response = yield from _exchange(_Request("GET", path, params=params), policy)
    return _json(response)


def _get_bytes(policy: RetryPolicy, path: str, params: Mapping[str, Any] | None = None) -> _Op[bytes]:
    """A binary answer (a PNG, a DICOM object); errors are still problem documents."""
    response = yield from _exchange(_Request("GET", path, params=params), policy)
    return response.content


def _wait(policy: RetryPolicy, job_id: str, timeout: float, interval: float, max_interval: float,
          ) -> _Op[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    pause = interval
    while True:
        response = yield from _exchange(_Request("GET", f"/v1/jobs/{job_id}"), policy)
        job: dict[str, Any] = _json(response)
        if job.get("status") in WAIT_STOP_STATUSES:
            return job
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"job {job_id} is still {job.get('status')} after {timeout:g} s", job)
        asked = retry_after(response)
        yield _Sleep(min(asked if asked is not None else pause, left))
        pause = min(pause * 2, max_interval)


def _review_body(dimension: str, score: int, decision: str, comment: str | None,
                 corrections: Mapping[str, Any] | None, next_phases: Sequence[str] | None,
                 group: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"dimension": dimension, "score": score, "decision": decision}
    extra = {"comment": comment, "corrections": dict(corrections) if corrections is not None else None,
             "next_phases": list(next_phases) if next_phases is not None else None, "group": group}
    body.update({name: value for name, value in extra.items() if value is not None})
    return body


def _report(policy: RetryPolicy, from_: str | None, to: str | None, mode: str | None, tz: str | None,
            group_by: str | None, format: Literal["json", "csv"]) -> _Op[Any]:
    params = {name: value for name, value in (("from", from_), ("to", to), ("mode", mode), ("tz", tz),
                                              ("group_by", group_by)) if value is not None}
    params["format"] = format
    response = yield from _exchange(_Request("GET", "/v1/reports/scores", params=params), policy)
    return response.text if format == "csv" else _json(response)


class _Base:
    """Configuration and the operations as generators; the subclasses drive them."""

    def __init__(self, url: str | None, key: str | None, policy: RetryPolicy | None) -> None:
        self.url = (url or os.environ.get("FADA_URL") or DEFAULT_URL).rstrip("/")
        self.key = key if key is not None else os.environ.get("FADA_API_KEY")
        self.policy = policy or RetryPolicy()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    @staticmethod
    def _kwargs(request: _Request) -> dict[str, Any]:
        return {"params": request.params, "headers": request.headers, "data": request.data,
                "files": request.files, "json": request.json}

    # operations: each returns a generator the client drives
    def _op_submit(self, file: FileInput, mode: Mode, external_id: str | None, frame: int | None,
                   idempotency_key: str | None, callback_url: str | None) -> _Op[dict[str, Any]]:
        return _submit(self.policy, [file], "/v1/jobs", mode, external_id, frame, idempotency_key, callback_url)

    def _op_submit_batch(self, files: Sequence[FileInput], mode: Mode, external_id: str | None, frame: int | None,
                         idempotency_key: str | None, callback_url: str | None) -> _Op[dict[str, Any]]:
        if not files:
            raise ValueError("a batch needs at least one file")
        return _submit(self.policy, files, "/v1/batches", mode, external_id, frame, idempotency_key, callback_url)

    def _op_get(self, path: str, params: Mapping[str, Any] | None = None) -> _Op[Any]:
        return _get(self.policy, path, params)

    def _op_get_bytes(self, path: str, params: Mapping[str, Any] | None = None) -> _Op[bytes]:
        return _get_bytes(self.policy, path, params)

    def _op_wait(self, job_id: str, timeout: float, interval: float, max_interval: float) -> _Op[dict[str, Any]]:
        return _wait(self.policy, job_id, timeout, interval, max_interval)

    def _op_send(self, request: _Request) -> _Op[Any]:
        response = yield from _exchange(request, self.policy)
        return _json(response)


def _list_params(status: str | None, mode: str | None, external_id: str | None, review_state: str | None,
                 batch_id: str | None, limit: int | None, cursor: str | None) -> dict[str, Any]:
    values = {"status": status, "mode": mode, "external_id": external_id, "review_state": review_state,
              "batch_id": batch_id, "limit": limit, "cursor": cursor}
    return {name: value for name, value in values.items() if value is not None}


def _review_param(review: str | None) -> dict[str, Any] | None:
    return {"review": review} if review is not None else None


def _audit_params(job_id: str | None, key: str | None, action: str | None, outcome: str | None, from_: str | None,
                  to: str | None, tz: str | None, limit: int | None, cursor: str | None) -> dict[str, Any]:
    values = {"job_id": job_id, "key": key, "action": action, "outcome": outcome, "from": from_, "to": to, "tz": tz,
              "limit": limit, "cursor": cursor}
    return {name: value for name, value in values.items() if value is not None}


class FadaClient(_Base):
    """Blocking client; use as a context manager (or call :meth:`close`)."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 60.0,
                 policy: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(url, key, policy)
        self._http = httpx.Client(base_url=self.url, headers=self._headers(), timeout=timeout, transport=transport)

    def __enter__(self) -> FadaClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _run(self, op: _Op[T]) -> T:
        outcome: _Outcome = None
        try:
            while True:
                action = op.send(outcome)
                if isinstance(action, _Sleep):
                    time.sleep(action.seconds)
                    outcome = None
                    continue
                try:
                    outcome = self._http.request(action.method, action.path, **self._kwargs(action))
                except httpx.TransportError as exc:
                    outcome = exc
        except StopIteration as stop:
            return stop.value

    # jobs
    def submit(self, file: FileInput, *, mode: Mode = "autonomous", external_id: str | None = None,
               frame: int | None = None, idempotency_key: str | None = None,
               callback_url: str | None = None) -> dict[str, Any]:
        """Submit one PNG, JPEG or DICOM file (a path or the bytes); returns the job resource.
        ``callback_url``: this job's signed webhook events go there (see ``verify_webhook``)."""
        return self._run(self._op_submit(file, mode, external_id, frame, idempotency_key, callback_url))

    def submit_batch(self, files: Sequence[FileInput], *, mode: Mode = "autonomous", external_id: str | None = None,
                     frame: int | None = None, idempotency_key: str | None = None,
                     callback_url: str | None = None) -> dict[str, Any]:
        """Submit several files in one request; returns ``{"id", "jobs": [...]}``."""
        return self._run(self._op_submit_batch(files, mode, external_id, frame, idempotency_key, callback_url))

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        return self._run(self._op_get(f"/v1/batches/{batch_id}"))

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._run(self._op_get(f"/v1/jobs/{job_id}"))

    def list_jobs(self, *, status: str | None = None, mode: str | None = None, external_id: str | None = None,
                  review_state: str | None = None, batch_id: str | None = None, limit: int | None = None,
                  cursor: str | None = None) -> dict[str, Any]:
        """One page: ``{"items", "next_cursor"}``."""
        params = _list_params(status, mode, external_id, review_state, batch_id, limit, cursor)
        return self._run(self._op_get("/v1/jobs", params))

    def wait(self, job_id: str, timeout: float = 600.0, *, interval: float = 0.25,
             max_interval: float = 5.0) -> dict[str, Any]:
        """Poll until the job is final or awaiting review; raises :class:`WaitTimeout`."""
        return self._run(self._op_wait(job_id, timeout, interval, max_interval))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._run(self._op_send(_Request("POST", f"/v1/jobs/{job_id}/cancel")))

    def result(self, job_id: str) -> dict[str, Any]:
        return self._run(self._op_get(f"/v1/jobs/{job_id}/result"))

    def coco(self, job_id: str) -> dict[str, Any]:
        return self._run(self._op_get(f"/v1/jobs/{job_id}/coco"))

    def image(self, job_id: str) -> bytes:
        """The PNG the model read (:class:`Gone` once the retention policy deleted it)."""
        return self._run(self._op_get_bytes(f"/v1/jobs/{job_id}/image"))

    def overlay(self, job_id: str, *, review: str | None = None) -> bytes:
        """The image with the result drawn on it, as PNG; ``review``: a review id whose corrected
        annotations are drawn instead of the model's."""
        return self._run(self._op_get_bytes(f"/v1/jobs/{job_id}/overlay.png", _review_param(review)))

    def structured_report(self, job_id: str) -> bytes:
        """The result as a DICOM Comprehensive 3D SR (Part-10 bytes); jobs made from DICOM only."""
        return self._run(self._op_get_bytes(f"/v1/jobs/{job_id}/sr.dcm"))

    # reviews
    def review(self, job_id: str, *, dimension: str, score: int, decision: str, comment: str | None = None,
               corrections: Mapping[str, Any] | None = None, next_phases: Sequence[str] | None = None,
               group: str | None = None) -> dict[str, Any]:
        """Post a review (reviewer key); a second review of the same dimension is a :class:`Conflict`."""
        body = _review_body(dimension, score, decision, comment, corrections, next_phases, group)
        request = _Request("POST", f"/v1/jobs/{job_id}/reviews", json=body, idempotent=False)
        return self._run(self._op_send(request))

    def amend_review(self, job_id: str, *, dimension: str, score: int, decision: str, comment: str | None = None,
                     corrections: Mapping[str, Any] | None = None, next_phases: Sequence[str] | None = None,
                     group: str | None = None) -> dict[str, Any]:
        """Amend the caller's review of this dimension (the history is kept)."""
        body = _review_body(dimension, score, decision, comment, corrections, next_phases, group)
        body.pop("dimension")
        request = _Request("PUT", f"/v1/jobs/{job_id}/reviews/{dimension}", json=body)
        return self._run(self._op_send(request))

    def reviews(self, job_id: str) -> list[dict[str, Any]]:
        return self._run(self._op_get(f"/v1/jobs/{job_id}/reviews"))["items"]

    # reports
    def score_report(self, *, from_: str | None = None, to: str | None = None, mode: str | None = None,
                     tz: str | None = None, group_by: str | None = None,
                     format: Literal["json", "csv"] = "json") -> Any:
        """The score report (qa key): a dict for json, the text for csv. ``tz``: the IANA zone
        of dates and days (the service's default when None)."""
        return self._run(_report(self.policy, from_, to, mode, tz, group_by, format))

    # the audit trail
    def audit_events(self, *, job_id: str | None = None, key: str | None = None, action: str | None = None,
                     outcome: str | None = None, from_: str | None = None, to: str | None = None,
                     tz: str | None = None, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """One page of the audit trail (admin key), newest first: ``{"items", "next_cursor"}``.
        ``key`` is the acting key's id or prefix."""
        params = _audit_params(job_id, key, action, outcome, from_, to, tz, limit, cursor)
        return self._run(self._op_get("/v1/audit", params))


class AsyncFadaClient(_Base):
    """The same client for asyncio; use with ``async with`` (or await :meth:`aclose`)."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: float = 60.0,
                 policy: RetryPolicy | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(url, key, policy)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers(), timeout=timeout,
                                       transport=transport)

    async def __aenter__(self) -> AsyncFadaClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _run(self, op: _Op[T]) -> T:
        outcome: _Outcome = None
        try:
            while True:
                action = op.send(outcome)
                if isinstance(action, _Sleep):
                    await asyncio.sleep(action.seconds)
                    outcome = None
                    continue
                try:
                    outcome = await self._http.request(action.method, action.path, **self._kwargs(action))
                except httpx.TransportError as exc:
                    outcome = exc
        except StopIteration as stop:
            return stop.value

    # jobs
    async def submit(self, file: FileInput, *, mode: Mode = "autonomous", external_id: str | None = None,
                     frame: int | None = None, idempotency_key: str | None = None,
                     callback_url: str | None = None) -> dict[str, Any]:
        return await self._run(self._op_submit(file, mode, external_id, frame, idempotency_key, callback_url))

    async def submit_batch(self, files: Sequence[FileInput], *, mode: Mode = "autonomous",
                           external_id: str | None = None, frame: int | None = None,
                           idempotency_key: str | None = None, callback_url: str | None = None) -> dict[str, Any]:
        return await self._run(self._op_submit_batch(files, mode, external_id, frame, idempotency_key,
                                                     callback_url))

    async def get_batch(self, batch_id: str) -> dict[str, Any]:
        return await self._run(self._op_get(f"/v1/batches/{batch_id}"))

    async def get_job(self, job_id: str) -> dict[str, Any]:
        return await self._run(self._op_get(f"/v1/jobs/{job_id}"))

    async def list_jobs(self, *, status: str | None = None, mode: str | None = None, external_id: str | None = None,
                        review_state: str | None = None, batch_id: str | None = None, limit: int | None = None,
                        cursor: str | None = None) -> dict[str, Any]:
        params = _list_params(status, mode, external_id, review_state, batch_id, limit, cursor)
        return await self._run(self._op_get("/v1/jobs", params))

    async def wait(self, job_id: str, timeout: float = 600.0, *, interval: float = 0.25,
                   max_interval: float = 5.0) -> dict[str, Any]:
        return await self._run(self._op_wait(job_id, timeout, interval, max_interval))

    async def cancel(self, job_id: str) -> dict[str, Any]:
        request = _Request("POST", f"/v1/jobs/{job_id}/cancel")
        return await self._run(self._op_send(request))

    async def result(self, job_id: str) -> dict[str, Any]:
        return await self._run(self._op_get(f"/v1/jobs/{job_id}/result"))

    async def coco(self, job_id: str) -> dict[str, Any]:
        return await self._run(self._op_get(f"/v1/jobs/{job_id}/coco"))

    async def image(self, job_id: str) -> bytes:
        return await self._run(self._op_get_bytes(f"/v1/jobs/{job_id}/image"))

    async def overlay(self, job_id: str, *, review: str | None = None) -> bytes:
        return await self._run(self._op_get_bytes(f"/v1/jobs/{job_id}/overlay.png", _review_param(review)))

    async def structured_report(self, job_id: str) -> bytes:
        return await self._run(self._op_get_bytes(f"/v1/jobs/{job_id}/sr.dcm"))

    # reviews
    async def review(self, job_id: str, *, dimension: str, score: int, decision: str, comment: str | None = None,
                     corrections: Mapping[str, Any] | None = None, next_phases: Sequence[str] | None = None,
                     group: str | None = None) -> dict[str, Any]:
        body = _review_body(dimension, score, decision, comment, corrections, next_phases, group)
        request = _Request("POST", f"/v1/jobs/{job_id}/reviews", json=body, idempotent=False)
        return await self._run(self._op_send(request))

    async def amend_review(self, job_id: str, *, dimension: str, score: int, decision: str,
                           comment: str | None = None, corrections: Mapping[str, Any] | None = None,
                           next_phases: Sequence[str] | None = None, group: str | None = None) -> dict[str, Any]:
        body = _review_body(dimension, score, decision, comment, corrections, next_phases, group)
        body.pop("dimension")
        request = _Request("PUT", f"/v1/jobs/{job_id}/reviews/{dimension}", json=body)
        return await self._run(self._op_send(request))

    async def reviews(self, job_id: str) -> list[dict[str, Any]]:
        page = await self._run(self._op_get(f"/v1/jobs/{job_id}/reviews"))
        return page["items"]

    # reports
    async def score_report(self, *, from_: str | None = None, to: str | None = None, mode: str | None = None,
                           tz: str | None = None, group_by: str | None = None,
                           format: Literal["json", "csv"] = "json") -> Any:
        return await self._run(_report(self.policy, from_, to, mode, tz, group_by, format))

    async def audit_events(self, *, job_id: str | None = None, key: str | None = None, action: str | None = None,
                           outcome: str | None = None, from_: str | None = None, to: str | None = None,
                           tz: str | None = None, limit: int | None = None,
                           cursor: str | None = None) -> dict[str, Any]:
        params = _audit_params(job_id, key, action, outcome, from_, to, tz, limit, cursor)
        return await self._run(self._op_get("/v1/audit", params))
