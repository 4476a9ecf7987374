"""problem+json (RFC 9457) for every error: ``type``, ``title``, ``status``, ``detail`` and
a ``code``; never a stack trace."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.ingest import IngestError
from services.jobs import (
    IdempotencyConflict,
    ImagePurged,
    InvalidCursor,
    InvalidTransition,
    JobNotFound,
    TooManyPending,
)
from services.reviews import ReviewsError

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"
TYPE_BASE = "urn:fada-serve:problem:"


class ProblemDetails(BaseModel):
    """RFC 9457 problem document, as every error of this API is answered."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    code: str


def problem_doc(description: str) -> dict[str, Any]:
    """An OpenAPI response entry for a problem+json answer."""
    return {"description": description,
            "content": {MEDIA_TYPE: {"schema": ProblemDetails.model_json_schema()}}}


# A route's own problem answers (404, 409...); the message is in the document's code and detail.
PROBLEM = problem_doc("see the problem document's code and detail")

# Documented on every /v1 operation by the app factory, not by each route: the middleware
# and validation can answer these anywhere.
V1_PROBLEMS: dict[int | str, dict[str, Any]] = {
    401: problem_doc("missing, unknown, revoked or expired API key"),
    403: problem_doc("the key's role may not do this"),
    422: problem_doc("invalid request fields, or a query parameter or form field the route does not take"),
}


class Problem(Exception):
    """Raise to answer with a problem document."""

    def __init__(self, status: int, code: str, detail: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers, self.extra = status, code, detail, headers, extra


def problem_body(status: int, code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"type": TYPE_BASE + code, "title": HTTPStatus(status).phrase, "status": status, "detail": detail,
            "code": code, **extra}


def problem_response(status: int, code: str, detail: str, *, headers: dict[str, str] | None = None,
                     **extra: Any) -> JSONResponse:
    return JSONResponse(problem_body(status, code, detail, **extra), status_code=status, media_type=MEDIA_TYPE,
                        headers=headers)


def pending_retry_after(request: Request) -> dict[str, str]:
    """The Retry-After header of an answer refused for the key's pending-job limit."""
    return {"Retry-After": str(request.app.state.ctx.settings.pending_retry_after_seconds)}


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Never echo the input back: it may be a whole uploaded file.
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()]


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc.status, exc.code, exc.detail, headers=exc.headers, **exc.extra)

    @app.exception_handler(IngestError)
    async def _ingest(_: Request, exc: IngestError) -> JSONResponse:
        where: dict[str, Any] = {} if exc.file_index is None else {"file_index": exc.file_index}
        return problem_response(exc.status, exc.code, exc.detail, **where)

    @app.exception_handler(IdempotencyConflict)
    async def _idem(_: Request, exc: IdempotencyConflict) -> JSONResponse:
        return problem_response(422, "idempotency_key_reused", str(exc))

    @app.exception_handler(TooManyPending)
    async def _pending(request: Request, exc: TooManyPending) -> JSONResponse:
        if exc.never:
            return problem_response(422, "batch_exceeds_pending_limit", str(exc), limit=exc.limit)
        return problem_response(429, "too_many_pending_jobs", str(exc), pending=exc.pending, limit=exc.limit,
                                headers=pending_retry_after(request))

    @app.exception_handler(JobNotFound)
    async def _not_found(_: Request, exc: JobNotFound) -> JSONResponse:
        return problem_response(404, "job_not_found", str(exc))

    @app.exception_handler(InvalidTransition)
    async def _conflict(_: Request, exc: InvalidTransition) -> JSONResponse:
        return problem_response(409, "invalid_transition", str(exc), current_status=exc.current)

    @app.exception_handler(ImagePurged)
    async def _purged(_: Request, exc: ImagePurged) -> JSONResponse:
        return problem_response(410, "image_purged", str(exc),
                                purged_at=exc.purged_at.isoformat() if exc.purged_at else None)

    @app.exception_handler(ReviewsError)
    async def _review(_: Request, exc: ReviewsError) -> JSONResponse:
        return problem_response(exc.status, exc.code, exc.detail, **exc.extra)

    @app.exception_handler(InvalidCursor)
    async def _cursor(_: Request, exc: InvalidCursor) -> JSONResponse:
        return problem_response(422, "invalid_cursor", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(exc)
        sent = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not _is_json(sent) and any(e["loc"] == ["body"] and e["type"] != "missing" for e in errors):
            # A JSON route read a form, a text body or one with no Content-Type as nothing: say
            # what to send, not that "input should be a valid dictionary".
            return problem_response(415, "unsupported_media_type",
                                    "this route takes a JSON body (Content-Type: application/json), not "
                                    f"{sent or 'a body without Content-Type'}")
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors)
        return problem_response(422, "invalid_request", f"invalid request fields: {fields}", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status_code, f"http_{exc.status_code}")
        return problem_response(exc.status_code, code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal_error", "the server failed to handle this request; it was logged")
