"""The HTTP resources (pydantic models at the edge), built from ORM rows."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from shared.db.models import Job, JobMode, JobStatus, ReviewState


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


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str]
