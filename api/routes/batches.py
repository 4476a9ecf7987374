"""``/v1/batches``: several files in one request, and their progress."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Request, Response, UploadFile

from services.jobs import batch_counts, get_job
from services.jobs.intake import Upload, accept_batch
from services.queue import publisher
from shared.db.models import Batch, Role

from ..context import Caller
from ..deps import BatchId, Ctx, require, set_audit_job
from ..metrics import JOBS_SUBMITTED
from ..problems import PROBLEM, Problem
from ..schemas import BatchOut, BatchStatus, JobOut
from .jobs import (
    SUBMIT_ERRORS,
    CallbackUrlField,
    ExternalIdField,
    FrameField,
    IdempotencyKeyHeader,
    ModeField,
    Reader,
    job_options,
)

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post("", status_code=202, response_model=BatchOut, responses={200: {"model": BatchOut}, **SUBMIT_ERRORS})
def submit_batch(
    request: Request,
    response: Response,
    ctx: Ctx,
    caller: Annotated[Caller, Depends(require(Role.submitter))],
    file: Annotated[list[UploadFile], File(description="one part per image, all named 'file'", min_length=1)],
    mode: ModeField = "autonomous",
    external_id: ExternalIdField = None,
    frame: FrameField = 0,
    callback_url: CallbackUrlField = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> BatchOut:
    """All or nothing: one refused file refuses the batch, naming the file."""
    if len(file) > ctx.settings.max_batch_files:
        raise Problem(422, "too_many_files", f"{len(file)} files; a batch takes at most {ctx.settings.max_batch_files}")
    uploads = [Upload(f.file.read(), f.filename) for f in file]
    accepted, job_ids = accept_batch(
        ctx.sm, uploads, job_options(ctx, request, caller, mode=mode, external_id=external_id, frame=frame,
                                     callback_url=callback_url),
        api_key_id=caller.key_id, enqueue=publisher(ctx.celery),
        max_pixels=ctx.settings.max_pixels, max_attempts=ctx.settings.job_max_attempts,
        idempotency_key=idempotency_key, max_pending=ctx.pending_limit(caller))
    set_audit_job(request, accepted.id, batch_id=accepted.id, jobs=len(job_ids), replay=not accepted.created)
    request.state.audit_job_id = None  # a batch id is not a job id
    if accepted.created:
        JOBS_SUBMITTED.labels(mode).inc(len(job_ids))
    else:
        response.status_code = 200
    response.headers["Location"] = f"/v1/batches/{accepted.id}"
    with ctx.sm() as session:
        jobs = [get_job(session, job_id) for job_id in job_ids]
        return BatchOut(id=accepted.id, jobs=[JobOut.of(j) for j in jobs if j is not None])


@router.get("/{batch_id}", response_model=BatchStatus, responses={404: PROBLEM})
def read_batch(ctx: Ctx, caller: Reader, batch_id: BatchId) -> BatchStatus:
    with ctx.sm() as session:
        batch = session.get(Batch, batch_id)
        if batch is None or (caller.role is Role.submitter and batch.api_key_id != caller.key_id):
            raise Problem(404, "batch_not_found", f"batch {batch_id} not found")
        counts = batch_counts(session, batch_id)
        return BatchStatus(id=batch.id, created_at=batch.created_at, total=sum(counts.values()), counts=counts,
                           jobs_url=f"/v1/jobs?batch_id={batch.id}")
