"""DICOMweb STOW-RS: ``POST /dicomweb/studies`` stores instances, each becoming a job."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.dicomweb.multipart_related import MalformedMultipart, NotMultipartRelated, boundary_of, split_parts
from services.dicomweb.stow import store_instances, to_dicom_json
from services.queue import publisher
from shared.db.models import Role

from ..context import Caller
from ..deps import Ctx, require, set_audit_job
from ..dicom_xml import MEDIA_TYPE as DICOM_XML
from ..dicom_xml import dicom_json_to_xml
from ..metrics import JOBS_SUBMITTED
from ..negotiation import Offer, negotiate
from ..problems import Problem, pending_retry_after, problem_doc
from .jobs import job_options

router = APIRouter(prefix="/dicomweb", tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"
# The two answers PS3.18 allows for STOW-RS, chosen by the Accept header; JSON when it admits
# both equally, or names neither type but matches through */*, application/* or application/json.
STOW_OFFERS = (Offer(DICOM_JSON, aliases=("application/json",)), Offer(DICOM_XML))


class DicomJSONResponse(JSONResponse):
    """JSON as DICOM JSON; the route's response class, so that OpenAPI documents no plain JSON."""

    media_type = DICOM_JSON




def _dicom_body(description: str) -> dict[str, object]:
    return {"description": description, "content": {DICOM_JSON: {}, DICOM_XML: {}}}


STOW_RESPONSES: dict[int | str, dict[str, object]] = {
    200: _dicom_body("every instance stored (ReferencedSOPSequence)"),
    202: _dicom_body("some instances failed (FailedSOPSequence)"),
    409: _dicom_body("no instance stored (FailedSOPSequence)"),
    503: _dicom_body("no instance stored: the API key has FADA_MAX_PENDING_PER_KEY jobs queued or running "
                     "(FailedSOPSequence, reason A700); retry after the Retry-After seconds"),
    400: problem_doc("the multipart/related body does not parse"),
    406: problem_doc("the Accept header admits neither application/dicom+json nor application/dicom+xml "
                     "(nothing is stored)"),
    413: problem_doc("body over the configured maximum"),
    415: problem_doc("not multipart/related; type=\"application/dicom\""),
}


STOW_BODY = {"requestBody": {"required": True, "content": {
    'multipart/related; type="application/dicom"': {"schema": {"type": "string", "format": "binary"}}}}}


@router.post("/studies", status_code=200, responses=STOW_RESPONSES, response_class=DicomJSONResponse,
             openapi_extra=STOW_BODY)
async def stow(
    request: Request,
    ctx: Ctx,
    caller: Annotated[Caller, Depends(require(Role.submitter))],
    mode: Annotated[Literal["autonomous", "hitl"], Query()] = "autonomous",
) -> Response:
    """Store DICOM instances (multipart/related, one application/dicom part each); each
    becomes a job with ``external_id`` = its SOP Instance UID. A repeated instance answers
    with its existing job. The answer is DICOM JSON or, for ``Accept: application/dicom+xml``,
    DICOM XML (the Native DICOM Model)."""
    answer_type = negotiate(request.headers.get("accept"), STOW_OFFERS)
    if answer_type is None:  # refused before anything is read or stored
        raise Problem(406, "not_acceptable",
                      f"this route answers {DICOM_JSON} or {DICOM_XML}; the Accept header admits neither",
                      available=[o.media_type for o in STOW_OFFERS], headers={"Vary": "Accept"})
    try:
        boundary = boundary_of(request.headers.get("content-type"))
    except NotMultipartRelated as exc:
        raise Problem(415, "unsupported_media_type", str(exc)) from exc
    body = bytearray()
    async for chunk in request.stream():  # the body limit middleware counts as it streams
        body += chunk
    try:
        parts = await run_in_threadpool(split_parts, bytes(body), boundary)
    except MalformedMultipart as exc:
        raise Problem(400, "malformed_multipart", str(exc)) from exc
    if not parts:
        raise Problem(422, "no_instances", "the multipart/related body holds no part")
    options = await run_in_threadpool(lambda: job_options(ctx, request, caller, mode=mode))
    outcome = await run_in_threadpool(
        store_instances, ctx.sm, parts, options, api_key_id=caller.key_id,
        enqueue=publisher(ctx.celery), max_pixels=ctx.settings.max_pixels,
        max_attempts=ctx.settings.job_max_attempts, max_pending=ctx.pending_limit(caller))
    JOBS_SUBMITTED.labels(options.mode.value).inc(outcome.created)
    request.state.audit_detail = {"stored": len(outcome.stored), "failed": len(outcome.failed),
                                  "job_ids": [job_id for _, _, job_id in outcome.stored][:50]}
    if len(outcome.stored) == 1:
        set_audit_job(request, outcome.stored[0][2])
    base = ctx.public_base(request)
    headers = {"Vary": "Accept", **(pending_retry_after(request) if outcome.status == 503 else {})}
    dataset = to_dicom_json(outcome, base)
    if answer_type == DICOM_XML:
        return Response(dicom_json_to_xml(dataset), status_code=outcome.status, media_type=DICOM_XML,
                        headers=headers)
    return DicomJSONResponse(dataset, status_code=outcome.status, headers=headers)
