"""``/v1/jobs``: submit, list, read, result, COCO, SR, the image and its overlay, cancel."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, Response, UploadFile
from pydantic import AfterValidator

from services.export.coco import to_coco
from services.export.dicom_sr import NotFromDicom, build_sr, content_time, source_instance, sr_bytes
from services.export.overlay import result_overlay
from services.jobs import cancel, current_document, get_job, list_jobs, rejected_by_reviewer, stored_png
from services.jobs.intake import JobOptions, Upload, accept_job
from services.notify import InvalidTarget, plan_notifications
from services.notify.log import deliveries_of
from services.queue import publisher
from services.reviews import corrected_annotations
from shared.db.models import URL_MAX_LENGTH, Job, JobMode, JobStatus, ReviewState, Role
from shared.schemas.results import ResultDocument
from shared.text import code_points, unprintable

from ..context import AppContext, Caller
from ..deps import ID_MAX, NO_NUL, PRINTABLE, Ctx, JobId, require, set_audit_job
from ..metrics import JOBS_SUBMITTED
from ..problems import PROBLEM, Problem, problem_doc
from ..schemas import DeliveryOut, JobOut, JobPage

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Submitter = Annotated[Caller, Depends(require(Role.submitter))]
Reader = Annotated[Caller, Depends(require(Role.submitter, Role.reviewer, Role.qa))]
IdempotencyKeyHeader = Annotated[str | None, Header(alias="Idempotency-Key", max_length=255, min_length=1,
                                                   pattern=NO_NUL)]
ModeField = Annotated[Literal["autonomous", "hitl"], Form()]
def _printable(value: str | None) -> str | None:
    bad = unprintable(value or "")
    if bad:
        raise ValueError(f"must be printable text: it holds control or format characters ({code_points(bad)})")
    return value


# min_length documents what strict_inputs enforces (FastAPI itself reads an empty form value as
# absent); the pattern says in the OpenAPI document what the validator checks in full (format
# characters such as U+202E too).
ExternalIdField = Annotated[str | None, Form(min_length=1, max_length=128, pattern=PRINTABLE),
                            AfterValidator(_printable)]
FrameField = Annotated[int, Form(ge=0, le=100_000)]
CallbackUrlField = Annotated[str | None, Form(
    min_length=1, max_length=URL_MAX_LENGTH, pattern=NO_NUL,
    description="http(s) URL for this job's signed webhook events instead of the key's own (the key needs a "
                "webhook secret)")]

SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: problem_doc("the multipart body does not parse"), 413: problem_doc("body over the configured maximum"),
    415: problem_doc("not a PNG, JPEG or DICOM Part-10 file"),
    422: problem_doc("undecodable image, too many pixels, bad field values, a callback URL the service "
                     "will not call, or a batch larger than the per-key pending limit"),
    429: problem_doc("the API key has FADA_MAX_PENDING_PER_KEY jobs queued or running; retry after the "
                     "Retry-After seconds")}


def job_options(ctx: AppContext, request: Request, caller: Caller, *, mode: str = "autonomous",
                external_id: str | None = None, frame: int = 0, callback_url: str | None = None) -> JobOptions:
    """The options of new jobs of this caller, with where their notifications go (and the base
    of their links)."""
    with ctx.sm() as session:
        try:
            plan = plan_notifications(session, caller.key_id, callback_url, ctx.settings)
        except InvalidTarget as exc:
            raise Problem(422, "invalid_callback_url", str(exc)) from exc
    base = ctx.public_base(request)
    return JobOptions(mode=JobMode(mode), external_id=external_id, frame=frame, webhook_url=plan.webhook_url,
                      pacs_push=plan.pacs_push, links_base=base)


def _visible(ctx: AppContext, caller: Caller, job_id: str) -> Job:
    """The job, if this caller may see it: submitters see their own jobs only (404 for others,
    so ids of other callers' jobs are not confirmed)."""
    with ctx.sm() as session:
        job = get_job(session, job_id)
        if job is None or (caller.role is Role.submitter and job.api_key_id != caller.key_id):
            raise Problem(404, "job_not_found", f"job {job_id} not found")
        session.expunge(job)
        return job


@router.post("", status_code=202, response_model=JobOut, responses={200: {"model": JobOut}, **SUBMIT_ERRORS})
def submit(
    request: Request,
    response: Response,
    ctx: Ctx,
    caller: Submitter,
    file: Annotated[UploadFile, File(description="PNG, JPEG or DICOM Part-10 (detected from content)")],
    mode: ModeField = "autonomous",
    external_id: ExternalIdField = None,
    frame: FrameField = 0,
    callback_url: CallbackUrlField = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobOut:
    """Accept one image; answers at once with the queued job (202), or with the original job
    (200) when the ``Idempotency-Key`` was used before with the same request."""
    options = job_options(ctx, request, caller, mode=mode, external_id=external_id, frame=frame,
                          callback_url=callback_url)
    accepted = accept_job(
        ctx.sm, Upload(file.file.read(), file.filename), options, api_key_id=caller.key_id,
        enqueue=publisher(ctx.celery), max_pixels=ctx.settings.max_pixels,
        max_attempts=ctx.settings.job_max_attempts, idempotency_key=idempotency_key,
        max_pending=ctx.pending_limit(caller))
    set_audit_job(request, accepted.id, replay=not accepted.created)
    if accepted.created:
        JOBS_SUBMITTED.labels(mode).inc()
    else:
        response.status_code = 200
    response.headers["Location"] = f"/v1/jobs/{accepted.id}"
    return JobOut.of(_visible(ctx, caller, accepted.id))


@router.get("", response_model=JobPage)
def list_(
    ctx: Ctx,
    caller: Reader,
    status: JobStatus | None = None,
    mode: JobMode | None = None,
    # NO_NUL, not PRINTABLE: jobs stored before external_id refused control characters can
    # still be found by theirs
    external_id: Annotated[str | None, Query(max_length=128, pattern=NO_NUL)] = None,
    review_state: ReviewState | None = None,
    batch_id: Annotated[str | None, Query(max_length=ID_MAX, pattern=NO_NUL)] = None,  # as BatchId
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobPage:
    """Jobs newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    with ctx.sm() as session:
        page = list_jobs(session, status=status, mode=mode, external_id=external_id, review_state=review_state,
                         batch_id=batch_id, limit=limit, cursor=cursor,
                         api_key_id=caller.key_id if caller.role is Role.submitter else None)
        return JobPage(items=[JobOut.of(j) for j in page.items], next_cursor=page.next_cursor)


@router.get("/{job_id}", response_model=JobOut, responses={404: PROBLEM})
def read(ctx: Ctx, caller: Reader, job_id: JobId) -> JobOut:
    return JobOut.of(_visible(ctx, caller, job_id))


def _document(ctx: AppContext, caller: Caller, job_id: str) -> ResultDocument:
    return _job_and_document(ctx, caller, job_id)[1]


def _job_and_document(ctx: AppContext, caller: Caller, job_id: str) -> tuple[Job, ResultDocument]:
    job = _visible(ctx, caller, job_id)
    with ctx.sm() as session:
        document = current_document(session, job_id)
    if document is None:
        raise Problem(409, "result_not_ready", f"job {job_id} has no result yet: it is {job.status.value}",
                      current_status=job.status.value)
    return job, document


@router.get("/{job_id}/result", response_model=ResultDocument, response_model_exclude_none=False,
            responses={404: PROBLEM, 409: PROBLEM})
def result(ctx: Ctx, caller: Reader, job_id: JobId) -> ResultDocument:
    """The result document, once the job has any phase output (also while awaiting review)."""
    return _document(ctx, caller, job_id)


@router.get("/{job_id}/coco", responses={404: PROBLEM, 409: PROBLEM})
def coco(ctx: Ctx, caller: Reader, job_id: JobId) -> dict[str, Any]:
    """The result's annotations as a COCO document; the image id is the job id."""
    return to_coco(_document(ctx, caller, job_id), ctx.profile, image_id=job_id)


@router.get("/{job_id}/sr.dcm", response_class=Response, responses={
    200: {"content": {"application/dicom": {}}, "description": "Comprehensive 3D SR (TID 1500)"},
    404: PROBLEM, 409: PROBLEM})
def structured_report(ctx: Ctx, caller: Reader, job_id: JobId) -> Response:
    """The result as a DICOM Comprehensive 3D SR / TID 1500 measurement report referencing the
    source instance (jobs made from DICOM only; 409 otherwise, before a result exists, or when
    the HITL reviewer rejected the interpretation)."""
    job, document = _job_and_document(ctx, caller, job_id)
    if rejected_by_reviewer(job.hitl_choice):
        raise Problem(409, "result_rejected", f"the reviewer rejected the interpretation of job {job_id}: no "
                      "structured report is made of a rejected result", current_status=job.status.value)
    with ctx.sm() as session:
        try:
            source = source_instance(session, job_id)
        except NotFromDicom as exc:
            raise Problem(409, "not_dicom", str(exc)) from exc
        made = content_time(session, job_id)
    sr = build_sr(document, source, job_id=job_id, made=made)
    return Response(sr_bytes(sr), media_type="application/dicom",
                    headers={"Content-Disposition": f'attachment; filename="{job_id}.sr.dcm"'})


# Pixels of a patient's scan: not to be kept by a browser's or a proxy's cache.
NO_STORE = {"Cache-Control": "no-store"}
PNG_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"image/png": {}}}, 404: PROBLEM, 410: PROBLEM}


@router.get("/{job_id}/image", response_class=Response, responses=PNG_RESPONSE)
def image(ctx: Ctx, caller: Reader, job_id: JobId) -> Response:
    """The image the model read: the analysed frame's pixels as stored after de-identification
    (a PNG without metadata, the original's size; a DICOM's burned-in text, if any, is in the
    pixels: see the job's ``burned_in_annotation``). 410 once the retention policy deleted it."""
    _visible(ctx, caller, job_id)
    with ctx.sm() as session:
        return Response(stored_png(session, job_id), media_type="image/png", headers=NO_STORE)


@router.get("/{job_id}/overlay.png", response_class=Response, responses={**PNG_RESPONSE, 409: PROBLEM})
def overlay(ctx: Ctx, caller: Reader, job_id: JobId,
            review: Annotated[str | None, Query(max_length=ID_MAX, description=(
                "a review id (GET /v1/jobs/{id}/reviews): draw that annotation review's corrected "
                "annotations instead of the model's"))] = None) -> Response:
    """The image with the model's boxes, masks, keypoints and labels drawn on it, and a footer
    naming the job, the model (in red when untrained) and whose annotations they are. 409 before
    a result, or when ``review`` corrects no annotations; 410 once the image was deleted."""
    _, document = _job_and_document(ctx, caller, job_id)
    with ctx.sm() as session:
        reviewed = corrected_annotations(session, job_id, review) if review is not None else None
        png = stored_png(session, job_id)
    picture = result_overlay(png, document, job_id=job_id, classes=ctx.profile.classes, reviewed=reviewed)
    return Response(picture, media_type="image/png", headers=NO_STORE)


@router.get("/{job_id}/deliveries", response_model=list[DeliveryOut], responses={404: PROBLEM})
def deliveries(ctx: Ctx, caller: Reader, job_id: JobId) -> list[DeliveryOut]:
    """The job's notification log: each webhook event (and SR push to the PACS) with every try
    and what the receiver answered. Readers other than the job's own key see webhook URLs
    without their query."""
    job = _visible(ctx, caller, job_id)
    owner = caller.role is Role.admin or job.api_key_id == caller.key_id
    with ctx.sm() as session:
        return [DeliveryOut.of(d, tries, owner=owner) for d, tries in deliveries_of(session, job_id)]


@router.post("/{job_id}/cancel", response_model=JobOut, responses={404: PROBLEM, 409: PROBLEM})
def cancel_(ctx: Ctx, caller: Submitter, job_id: JobId) -> JobOut:
    """Queued or awaiting-review jobs become ``canceled``; any other status (a job canceled
    already included) is a 409 naming the current status."""
    _visible(ctx, caller, job_id)
    with ctx.sm.begin() as session:
        if not cancel(session, job_id):
            raise Problem(409, "invalid_transition", f"cannot cancel job {job_id}: it is canceled already",
                          current_status="canceled")
    return JobOut.of(_visible(ctx, caller, job_id))
