"""Pages for the people who judge results, in a browser (the key as a Basic password):

- ``GET /v1/reports/jobs/{id}.html``: one job (picture, reading, phases, reviews) and, for a
  reviewer, the review forms;
- ``POST /v1/reports/jobs/{id}/reviews``: what those forms post (``api.form_tokens`` guards
  it against other sites), then back to the page;
- ``GET /v1/reports/queue.html``: the reviewer's queue, each job a link to its page.

The pages are self-contained (inline CSS and picture, no script); the review itself is the
same service call as ``POST``/``PUT /v1/jobs/{id}/reviews``.
"""

from __future__ import annotations

from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import StringConstraints

from services.jobs import current_document, publish_jobs
from services.queue import publisher
from services.reports import ReportParameterError, parse_zone
from services.reports.job_html import ReviewForms, render_job_page, render_queue_page
from services.reports.job_view import JobView, job_view
from services.reviews import (
    Corrections,
    ReviewInput,
    ReviewsError,
    review_queue,
    save_review,
)
from shared.db.clock import db_now
from shared.db.models import ReviewDecision, ReviewDimension, Role

from ..context import AppContext, Caller
from ..credentials import presented_key
from ..deps import ID_MAX, NO_NUL, TZ_SCHEMA, Ctx, JobId, require, set_audit_job
from ..form_tokens import cross_site, make_token, token_problem
from ..problems import PROBLEM, Problem

router = APIRouter(tags=["review pages"])

ReviewerOrQA = Annotated[Caller, Depends(require(Role.reviewer, Role.qa))]
ReviewerOnly = Annotated[Caller, Depends(require(Role.reviewer))]
Tz = Annotated[str | None, Query(max_length=64, json_schema_extra=TZ_SCHEMA,
                                 description="IANA time zone of the page's times; empty: FADA_REPORT_TIMEZONE")]
HTML = {"content": {"text/html": {"schema": {"type": "string"}}}}
# default-src does not cover where forms go: only back to this service.
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                           "form-action 'self'",
                "Cache-Control": "no-store"}


def _zone(ctx: AppContext, tz: str | None) -> ZoneInfo:
    try:
        return parse_zone(tz, ctx.settings.report_timezone)
    except ReportParameterError as exc:
        raise Problem(422, "invalid_report_parameter", str(exc)) from exc


def _secret(request: Request) -> str:
    """The secret the request was authenticated with (the middleware read this very header)."""
    secret = presented_key(request.headers.get("authorization"), basic=True)
    if secret is None:  # cannot happen behind the middleware; never sign a token with nothing
        raise Problem(401, "unauthorized", "missing API key")
    return secret


def _changed_fields(sent: dict[str, str], model: dict[str, str]) -> dict[str, str]:
    """The interpretation fields the reviewer changed. A browser sends a text box's line breaks
    as CRLF: compared, and kept, as the model writes them."""
    texts = {name: value.replace("\r\n", "\n") for name, value in sent.items()}
    return {name: value for name, value in texts.items() if value.strip() != model.get(name, "").strip()}


def _page(request: Request, ctx: AppContext, caller: Caller, job_id: str, *, zone: ZoneInfo,
          review: str | None = None, error: str | None = None, status: int = 200) -> HTMLResponse:
    with ctx.sm() as session:
        view: JobView = job_view(session, job_id, classes=ctx.profile.classes, review_id=review)
    forms = None
    if caller.role in (Role.reviewer, Role.admin):
        forms = ReviewForms(token=make_token(_secret(request), job_id), reviewer_key_id=caller.key_id,
                            view_labels=ctx.profile.view_labels, routing_groups=sorted(ctx.profile.map.routing_groups),
                            interpretation_fields=ctx.profile.interpretation_fields)
    return HTMLResponse(render_job_page(view, zone=zone, forms=forms, error=error), status_code=status,
                        headers=PAGE_HEADERS)


@router.get("/v1/reports/jobs/{job_id}.html", response_class=HTMLResponse,
            responses={200: HTML, 404: PROBLEM, 409: PROBLEM})
def job_html(request: Request, ctx: Ctx, caller: ReviewerOrQA, job_id: JobId, tz: Tz = None, review: Annotated[
        str | None, Query(max_length=ID_MAX, description="a review id: the picture shows that annotation review's "
                                                         "corrected annotations instead of the model's")] = None,
             ) -> HTMLResponse:
    """One job as a page for the sonographer or QA: the image with the annotations drawn (the
    model's, or a reviewer's with ``review``), the interpretation, view label and map, every
    phase with the items it dropped, the annotations as numbers, and the reviews; for a
    reviewer, the forms to score what is open to review (or amend their review)."""
    return _page(request, ctx, caller, job_id, zone=_zone(ctx, tz), review=review)


# A review the service refuses comes back as the page (409, 422); a form that does not parse is
# a 422 problem document like any other.
REFUSED_FORM = {"description": "the page with the reason; for fields that do not parse, a problem document",
                "content": {**HTML["content"], **PROBLEM["content"]}}


@router.post("/v1/reports/jobs/{job_id}/reviews", response_class=HTMLResponse, status_code=303,
             responses={303: {"description": "saved: back to the job's page"}, 403: PROBLEM, 404: PROBLEM,
                        409: {"description": "the page with the reason", **HTML}, 422: REFUSED_FORM})
def review_form(
    request: Request, ctx: Ctx, caller: ReviewerOnly, job_id: JobId,
    token: Annotated[str, Form(min_length=1, max_length=200)],
    dimension: Annotated[ReviewDimension, Form()],
    score: Annotated[int, Form(ge=0, le=3)],
    decision: Annotated[ReviewDecision, Form()],
    next_phases: Annotated[list[Literal["detect", "segment", "keypoints"]], Form(default_factory=list)],
    field: Annotated[list[Annotated[str, StringConstraints(max_length=128, pattern=NO_NUL)]],
                     Form(default_factory=list, max_length=50)],
    text: Annotated[list[Annotated[str, StringConstraints(max_length=4000, pattern=NO_NUL)]],
                    Form(default_factory=list, max_length=50)],
    comment: Annotated[str | None, Form(max_length=4000, pattern=NO_NUL)] = None,
    label: Annotated[str | None, Form(max_length=128, pattern=NO_NUL)] = None,
    choose_phases: Annotated[bool, Form()] = False,
    group: Annotated[str | None, Form(max_length=128, pattern=NO_NUL)] = None,
) -> Response:
    """The job page's review form: saves the caller's review of ``dimension`` (amends it when
    they have one), then 303 back to the page. ``field``/``text`` pairs hold the interpretation
    as the form showed it; those the reviewer changed become ``corrections.interpretation``. A
    field left blank is a field left out;
    ``choose_phases`` says the form offered the HITL choice, so no phase ticked is ``[]``
    (finish the job now). Refused with 403 when the browser says the form came from another
    site or its token was not made by this service for this key and job; a review the
    service refuses comes back as the page with the reason (409, 422)."""
    if cross_site(request.headers):
        raise Problem(403, "cross_site_form", "a review form posted from another site is refused")
    why = token_problem(_secret(request), job_id, token)
    if why is not None:
        raise Problem(403, "invalid_form_token", why)
    if len(field) != len(text):
        raise Problem(422, "invalid_request", "each interpretation text needs the field it belongs to")
    phases = [str(p) for p in next_phases] if choose_phases else None
    try:
        with ctx.sm.begin() as session:
            document = current_document(session, job_id)
            changed = _changed_fields(dict(zip(field, text, strict=True)),
                                      (document.interpretation if document else None) or {})
            corrections = Corrections(label=label or None, interpretation=changed or None) if label or changed else None
            data = ReviewInput(score=score, decision=decision, comment=comment, corrections=corrections,
                               next_phases=phases, group=group)
            saved = save_review(session, job_id=job_id, reviewer_key_id=caller.key_id, dimension=dimension,
                                data=data, profile=ctx.profile)
            review = saved.review
            audit = {"review_id": review.id, "dimension": dimension.value, "score": review.score,
                     "decision": review.decision.value, "revision": review.revision, "via": "job page"}
    except ReviewsError as exc:
        set_audit_job(request, job_id, refused=exc.code)
        return _page(request, ctx, caller, job_id, zone=_zone(ctx, None), error=exc.detail, status=exc.status)
    if saved.resumed:
        publish_jobs(ctx.sm, publisher(ctx.celery), [job_id])  # after the commit; refused: the sweeper sends it
    set_audit_job(request, job_id, **audit)
    return RedirectResponse(f"../{job_id}.html", status_code=303)


@router.get("/v1/reports/queue.html", response_class=HTMLResponse, responses={200: HTML})
def queue_html(ctx: Ctx, caller: ReviewerOnly, tz: Tz = None, limit: Annotated[int, Query(ge=1, le=500)] = 50,
               cursor: Annotated[str | None, Query(max_length=512)] = None) -> HTMLResponse:
    """The reviewer's queue (``GET /v1/reviews/queue``) as a page: the HITL jobs waiting for
    them, oldest first, ``limit`` a page, each a link to its job page."""
    zone = _zone(ctx, tz)
    with ctx.sm() as session:
        page = review_queue(session, reviewer_key_id=caller.key_id, limit=limit, cursor=cursor)
        now = db_now(session)
    return HTMLResponse(render_queue_page(page, reviewer=caller.name, zone=zone, now=now, limit=limit),
                        headers=PAGE_HEADERS)
