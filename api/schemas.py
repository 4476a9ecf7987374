"""The HTTP resources (pydantic models at the edge), built from ORM rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel

from shared.db.models import (
    ApiKey,
    AuditEvent,
    Delivery,
    DeliveryAttempt,
    DeliveryKind,
    DeliveryStatus,
    Job,
    JobMode,
    JobStatus,
    ReviewState,
    Role,
)


class JobError(BaseModel):
    code: str
    detail: str | None


class JobOut(BaseModel):
    id: str
    status: JobStatus
    mode: JobMode
    external_id: str | None
    created_at: datetime
    updated_at: datetime
    attempts: int
    error: JobError | None
    review_state: ReviewState
    result_url: str
    batch_id: str | None = None
    model_revision: str | None = None
    burned_in_annotation: str | None = None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(
            id=job.id, status=job.status, mode=job.mode, external_id=job.external_id, created_at=job.created_at,
            updated_at=job.updated_at, attempts=job.attempts,
            error=JobError(code=job.error_code, detail=job.error_detail) if job.error_code else None,
            review_state=job.review_state, result_url=f"/v1/jobs/{job.id}/result", batch_id=job.batch_id,
            model_revision=job.model_revision, burned_in_annotation=job.burned_in_annotation,
        )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class BatchOut(BaseModel):
    id: str
    jobs: list[JobOut]


class BatchStatus(BaseModel):
    id: str
    created_at: datetime
    total: int
    counts: dict[str, int]
    jobs_url: str


class DeliveryTry(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float


class DeliveryOut(BaseModel):
    """One notification of the job: a webhook event, or the SR pushed to the PACS."""

    id: str  # the webhook-id header of every try
    kind: DeliveryKind
    event: str
    # The webhook URL; the PACS address is not shown to callers. Its query (where receivers
    # often keep a token) only to the job's own key and admins.
    url: str | None
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    tries: list[DeliveryTry]

    @classmethod
    def of(cls, delivery: Delivery, tries: list[DeliveryAttempt], *, owner: bool) -> DeliveryOut:
        url = delivery.url if delivery.kind is DeliveryKind.webhook else None
        return cls(
            id=delivery.id, kind=delivery.kind, event=delivery.event,
            url=url if owner or url is None else _without_query(url), status=delivery.status,
            attempts=delivery.attempts,
            next_attempt_at=delivery.next_attempt_at if delivery.status is DeliveryStatus.pending else None,
            last_status_code=delivery.last_status_code, last_error=delivery.last_error,
            created_at=delivery.created_at, delivered_at=delivery.delivered_at,
            tries=[DeliveryTry(attempt=t.attempt, at=t.at, status_code=t.status_code, error=t.error,
                               duration_ms=t.duration_ms) for t in tries])


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    hidden = "?(hidden)" if parts.query else ""
    return parts._replace(query="", fragment="").geturl() + hidden


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str]


class AuditKeyOut(BaseModel):
    """The key that made the request, as ``fada keys list`` shows it (never its secret)."""

    id: str
    prefix: str
    name: str
    role: Role


class AuditEventOut(BaseModel):
    id: str
    at: datetime
    api_key: AuditKeyOut | None  # null: no known key (a request refused as unauthorized)
    # The method and the route's template, e.g. "GET /v1/jobs/{job_id}/result"; or a command of
    # fada keys ("fada keys rotate"), whose api_key is the key it changed (no key acts there).
    action: str
    outcome: Literal["ok", "denied", "rejected", "error"]
    job_id: str | None
    request_id: str | None  # the X-Request-ID the caller was answered with
    detail: dict[str, Any] | None

    @classmethod
    def of(cls, event: AuditEvent, key: ApiKey | None) -> AuditEventOut:
        return cls(id=event.id, at=event.at, action=event.action, outcome=event.outcome,
                   job_id=event.job_id, request_id=event.request_id, detail=event.detail,
                   api_key=AuditKeyOut(id=key.id, prefix=key.key_prefix, name=key.name, role=key.role)
                   if key is not None else None)


class AuditPageOut(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None
