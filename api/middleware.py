"""ASGI middleware: request ids, authentication with an audit trail, the body limit (which
also catches a form body cut off before its end), and HEAD answered as GET.

Authentication happens here, before any body is read, so an unknown key uploads nothing;
routes then check the role (403). Every ``/v1`` request writes one audit event (who, what,
which job, outcome) before its response starts, so no answered request goes unrecorded.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import anyio
from fastapi import HTTPException
from python_multipart.multipart import parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.keys import PREFIX_CHARS, AddressNotAllowed, authenticate
from shared.audit import record_event
from shared.db.outage import database_full, database_unavailable, short_reason
from shared.logs import REQUEST_ID

from .context import AppContext, Caller
from .credentials import challenges, missing_key_detail, presented_key, takes_basic
from .metrics import observe_request
from .problems import problem_response
from .route_templates import name_refused_route, route_of

log = logging.getLogger(__name__)

AUTH_PREFIXES = ("/v1/", "/dicomweb/")  # everything but the health routes and docs
# What a 503 for an unavailable database asks clients to wait: a restart or failover takes seconds.
DATABASE_RETRY_AFTER_S = 5
DATABASE_FULL_RETRY_AFTER_S = 60  # freeing disk space takes a person, not a restart's seconds


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "denied"
    return "rejected" if status < 500 else "error"


class GatewayMiddleware:
    """Request id (``X-Request-ID``), metrics, and for ``/v1`` and ``/dicomweb``: API-key auth
    (``api.credentials``) and audit."""

    def __init__(self, app: ASGIApp, ctx: AppContext) -> None:
        self.app, self.ctx = app, ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = (_header(scope, b"x-request-id") or "")[:64] or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        request_token = REQUEST_ID.set(request_id)  # on every line logged for this request
        audited = scope["path"].startswith(AUTH_PREFIXES)
        status_holder = {"status": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = 1
                if audited:
                    await self._audit(scope, message["status"])
                message.setdefault("headers", []).append((b"x-request-id", request_id.encode()))
            await send(message)

        try:
            if audited:
                basic = takes_basic(scope["method"], scope["path"])
                presented = presented_key(_header(scope, b"authorization"), basic=basic)
                if presented:  # which secret: an unknown one, or the old or new one of a rotated key
                    state["presented_prefix"] = presented[:PREFIX_CHARS]
                try:
                    caller = await self._authenticate(scope, presented) if presented else None
                except AddressNotAllowed as exc:  # a live key, from outside its networks
                    name_refused_route(scope)
                    state["audit_key_id"] = exc.key_id
                    await problem_response(403, "address_not_allowed", str(exc))(scope, receive, send_wrapper)
                    return
                if caller is None:
                    name_refused_route(scope)
                    detail = (missing_key_detail(_header(scope, b"authorization"), basic=basic) if presented is None
                              else "unknown, revoked or expired API key")
                    response = problem_response(401, "unauthorized", detail)
                    for challenge in challenges(basic=basic):
                        response.headers.append("WWW-Authenticate", challenge)
                    await response(scope, receive, send_wrapper)
                    return
                state["caller"] = caller
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            # Answered here, inside this middleware, so that a 500 is audited and carries its
            # request id like every other answer (the framework's handler sits outside).
            if status_holder.get("started"):
                log.exception("unhandled error on %s %s (request %s)", scope["method"], scope["path"], request_id)
                raise
            if database_full(exc):
                # No traceback either, but an error: it lasts until an operator frees space.
                log.error("database out of disk space on %s %s (request %s): %s", scope["method"], scope["path"],
                          request_id, short_reason(exc))
                response = problem_response(
                    503, "database_full", "the database has no disk space left to store this request; the service's "
                    "operators must free some. Retry later (a submission: with the same Idempotency-Key, so that it "
                    "is stored once)", headers={"Retry-After": str(DATABASE_FULL_RETRY_AFTER_S)})
            elif database_unavailable(exc):
                # The database's state, not a bug: one line per request, not a traceback.
                log.warning("database unavailable on %s %s (request %s): %s", scope["method"], scope["path"],
                            request_id, short_reason(exc))
                response = problem_response(
                    503, "database_unavailable", "the database cannot be reached right now; retry in a few seconds "
                    "(a submission: with the same Idempotency-Key, so that it is stored once)",
                    headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)})
            else:
                log.exception("unhandled error on %s %s (request %s)", scope["method"], scope["path"], request_id)
                response = problem_response(500, "internal_error",
                                            f"the server failed to handle this request; it was logged as {request_id}")
            await response(scope, receive, send_wrapper)
        finally:
            observe_request(scope, status_holder["status"], time.perf_counter() - started)
            REQUEST_ID.reset(request_token)

    async def _authenticate(self, scope: Scope, secret: str) -> Caller | None:
        client = scope.get("client")
        address = str(client[0]) if client else None

        def lookup() -> Caller | None:
            with self.ctx.sm.begin() as session:
                key = authenticate(session, secret, client=address)
                return (Caller(key_id=key.id, role=key.role, name=key.name, max_pending=key.max_pending)
                        if key is not None else None)

        return await anyio.to_thread.run_sync(lookup)

    async def _audit(self, scope: Scope, status: int) -> None:
        state: dict[str, Any] = scope.get("state", {})
        caller: Caller | None = state.get("caller")
        template = route_of(scope) or scope["path"]
        path_params = scope.get("path_params") or {}
        job_id = state.get("audit_job_id") or path_params.get("job_id")
        detail = {"method": scope["method"], "route": template, "status": status, **(state.get("audit_detail") or {})}
        if "route_template" in state:  # refused before routing: which job someone tried without a valid key
            detail["path"] = scope["path"][:200]
        if state.get("presented_prefix"):
            detail["presented_prefix"] = state["presented_prefix"]
        # Where the request came from, for "which workstation opened this result?": the peer's
        # address (behind a reverse proxy, the caller's once FORWARDED_ALLOW_IPS trusts the
        # proxy's X-Forwarded-For) and the program that sent it.
        client = scope.get("client")
        if client:
            detail["client"] = str(client[0])[:64]
        agent = _header(scope, b"user-agent")
        if agent:
            detail["user_agent"] = agent[:128]

        def write() -> None:
            with self.ctx.sm.begin() as session:
                record_event(session, action=f"{scope['method']} {template}"[:64], outcome=_outcome(status),
                             api_key_id=caller.key_id if caller else state.get("audit_key_id"), job_id=job_id,
                             detail=detail,
                             request_id=state.get("request_id"))

        try:
            await anyio.to_thread.run_sync(write)
        except Exception as exc:  # the answer still goes out; the failure is logged loudly
            if database_unavailable(exc):
                log.error("could not write the audit event for %s %s (status %d): database unavailable: %s",
                          scope["method"], scope["path"], status, short_reason(exc))
            else:
                log.exception("could not write the audit event for %s %s", scope["method"], scope["path"])


class HeadMiddleware:
    """HEAD answers exactly as GET would, with no body (RFC 9110 9.3.2). Starlette routes and
    static files take HEAD themselves, FastAPI's API routes do not (405). So a HEAD request
    is routed and run as a GET, and its body dropped; its status and headers (Content-Type,
    Content-Length of the GET body, Allow on a 405) go out as they are. The OpenAPI document
    stays as it is: one operation per route.

    It sits inside ``GatewayMiddleware``, which thus authenticates, audits and counts the
    request as the HEAD it is; the route the GET matched is handed back to that scope, so the
    audit event and the metrics name its template."""

    SHARED = ("route", "endpoint", "path_params")  # what routing writes that the outer scope reads

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        inner: Scope = {**scope, "method": "GET"}  # "state" is the same dict: caller, audit detail

        def hand_back() -> None:
            scope.update({key: inner[key] for key in self.SHARED if key in inner})

        async def send_head(message: Message) -> None:
            if message["type"] == "http.response.start":
                hand_back()
            elif message["type"] in ("http.response.body", "http.response.pathsend"):  # pathsend: a file
                message = {"type": "http.response.body", "body": b"", "more_body": message.get("more_body", False)}
            await send(message)

        try:
            await self.app(inner, receive, send_head)
        finally:
            hand_back()


class BodyTooLarge(HTTPException):
    """An HTTPException, because FastAPI re-raises those from body parsing (other errors
    become a 400); the problem handler answers 413 ``body_too_large``."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


class CutOffMultipart(HTTPException):
    """A multipart/form-data body that ends before its closing boundary: cut off in transit.
    The form parser would hand the route the parts that did arrive, and the client would be
    told a field is missing; the problem handler answers 400 ``malformed_body`` instead."""

    def __init__(self) -> None:
        super().__init__(400, "the multipart/form-data body ends before its closing boundary: it was cut off; "
                              "send the whole request again")


def _form_boundary(scope: Scope) -> bytes | None:
    """The boundary of a multipart/form-data request, read as the form parser reads it."""
    kind, params = parse_options_header(_header(scope, b"content-type") or "")
    if kind.lower() != b"multipart/form-data":
        return None
    return params.get(b"boundary") or None


class BodyLimitMiddleware:
    """Refuses a body over ``limit`` bytes: at once from its Content-Length, or while it
    streams (chunked uploads) by counting what arrives; it is never held in memory whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            response = problem_response(413, "body_too_large",
                                        f"the request body ({declared} bytes) is larger than the limit of "
                                        f"{self.limit} bytes")
            await response(scope, receive, send)
            return
        received = 0
        boundary = _form_boundary(scope)
        closing = b"--" + boundary + b"--" if boundary else b""
        tail = b""  # enough of the body's end to hold its closing delimiter (and a short epilogue)

        async def counting_receive() -> Message:
            nonlocal received, tail
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
                if closing:
                    tail = (tail + chunk)[-(len(closing) + 256):]
                    if not message.get("more_body", False) and closing not in tail:
                        raise CutOffMultipart()
            return message

        await self.app(scope, counting_receive, send)
