"""``/v1/reports``: QA reports over sonographer reviews (role qa; admin passes).

- ``GET /v1/reports/scores``: the score table as JSON (default) or CSV (``format=csv``).
- ``GET /v1/reports/scores.html``: the same report as a self-contained page with charts.

Both take the key as a Basic password too, for browsers (``api.credentials``).

Filters (both routes): ``from`` (inclusive) and ``to`` (exclusive) over the review's
``created_at``, each an RFC 3339 date or datetime with an offset; a date is a whole day in
``tz`` (an IANA zone; the service's ``FADA_REPORT_TIMEZONE`` when not given), so
``to=2026-03-31`` includes 31 March. ``mode`` (autonomous|hitl), ``group_by``
(mode|model|label|reviewed_label|reviewer|day; days in ``tz`` too). Empty values mean no
filter (what an HTML form sends). The rules live in ``services.reports.filters``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from services.reports import (
    GroupBy,
    ReportFilters,
    ReportParameterError,
    ScoreReport,
    parse_filters,
    parse_group_by,
    render_csv,
    render_html,
    score_report,
)
from shared.db.models import Role

from ..context import AppContext, Caller
from ..deps import BOUND_SCHEMA, TZ_SCHEMA, Ctx, require
from ..problems import Problem

router = APIRouter(tags=["reports"])

QA = Annotated[Caller, Depends(require(Role.qa))]

From = Annotated[str | None, Query(
    alias="from", max_length=64, json_schema_extra=BOUND_SCHEMA,
    description="Reviews created at or after this instant (inclusive). RFC 3339 date (the start of that day "
                "in tz) or datetime with Z or an offset.")]
To = Annotated[str | None, Query(
    alias="to", max_length=64, json_schema_extra=BOUND_SCHEMA,
    description="Reviews created before this instant (exclusive). A date alone includes that whole day in tz.")]
Tz = Annotated[str | None, Query(
    max_length=64, examples=["Europe/Paris"], json_schema_extra=TZ_SCHEMA,
    description="IANA time zone in which dates and group_by=day are read; empty: the service's "
                "FADA_REPORT_TIMEZONE (UTC unless configured)")]
Mode = Annotated[Literal["", "autonomous", "hitl"] | None, Query(description="The job's mode; empty: all")]
GroupByParam = Annotated[Literal["", "mode", "model", "label", "reviewed_label", "reviewer", "day"] | None, Query(
    description="One group per value (model = the reviewed job's model revision, label = the model's view "
                "label, reviewed_label = the view label as an interpretation review corrected it (the latest "
                "correction; the model's where none), reviewer = the reviewing key, day = the review's date in "
                "tz); empty: one overall group")]
Format = Annotated[Literal["json", "csv"], Query(alias="format", description="json (default) or csv")]


# --- the JSON resource -------------------------------------------------------------------------


class DimensionOut(BaseModel):
    n: int = Field(description="scores in this dimension, 0 included")
    mean: float | None = Field(description="mean of the scores 1-3 (3 places); null when there are none")
    perfect_rate: float | None = Field(description="share of 1s among the scores 1-3 (3 places); null when none")
    distribution: dict[Literal["0", "1", "2", "3"], int]


class GroupOut(BaseModel):
    key: str | None = Field(description="the group's value (\"all\" when not grouped); null when unknown")
    reviewer_id: str | None = Field(description="the reviewer's key id (group_by=reviewer), else null")
    cases: int = Field(description="distinct jobs with a review in this group")
    interpretation: DimensionOut
    annotation: DimensionOut
    overall_mean: float | None = Field(description="mean of the two dimension means; null if either is null")


class ReviewerOut(BaseModel):
    id: str
    name: str


class AgreementOut(BaseModel):
    dimension: Literal["interpretation", "annotation"]
    reviewer_a: ReviewerOut
    reviewer_b: ReviewerOut
    jobs: int = Field(description="jobs both reviewers scored 1-3 in this dimension")
    kappa: float | None = Field(description="quadratic-weighted Cohen's kappa (3 places); null when undefined")
    exact_agreement: float = Field(description="share of those jobs given the same score (3 places)")
    reason: str | None = Field(description="why kappa is null or uninformative")


class FiltersOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str | None = Field(alias="from", description="effective start, inclusive (UTC)")
    to: str | None = Field(description="effective end, exclusive (UTC)")
    mode: Literal["autonomous", "hitl"] | None
    tz: str = Field(description="the IANA time zone in which dates and days were read")


class ScoreReportOut(BaseModel):
    filters: FiltersOut
    group_by: Literal["mode", "model", "label", "reviewed_label", "reviewer", "day"] | None
    groups: list[GroupOut]
    agreement: list[AgreementOut]
    total: GroupOut = Field(description="all matching reviews as one group")
    reviews: int = Field(description="current reviews counted")
    warnings: list[str]
    generated_at: str


# --- the routes -------------------------------------------------------------------------------


def _report(request: Request, ctx: AppContext, raw_from: str | None, raw_to: str | None, mode: str | None,
            tz: str | None, group_by: str | None, **audit: str) -> ScoreReport:
    try:
        filters: ReportFilters = parse_filters(raw_from, raw_to, mode, tz, default_tz=ctx.settings.report_timezone)
        grouping: GroupBy | None = parse_group_by(group_by)
    except ReportParameterError as exc:
        raise Problem(422, "invalid_report_parameter", str(exc),
                      errors=[{"loc": ["query", exc.param], "msg": exc.message, "type": "value_error"}]) from exc
    request.state.audit_detail = {"report": "scores", "filters": filters.as_json(),
                                  "group_by": grouping.value if grouping else None, **audit}
    with ctx.sm() as session:
        return score_report(session, filters, grouping)


@router.get("/v1/reports/scores", response_model=ScoreReportOut,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})
def scores(request: Request, ctx: Ctx, caller: QA, from_: From = None, to: To = None, mode: Mode = None,
           tz: Tz = None, group_by: GroupByParam = None, format_: Format = "json") -> Any:
    """Sonographer scores per group: cases, and per dimension n, mean (scores 1-3), perfect
    rate (share of 1s among 1-3) and the distribution of 0-3; plus overall_mean and the
    inter-rater agreement. Only current reviews count (amendments replace, never add)."""
    report = _report(request, ctx, from_, to, mode, tz, group_by, format=format_)
    if format_ == "csv":
        return Response(render_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="fada-scores.csv"',
                                 **_warning_header(report)})
    return ScoreReportOut.model_validate(report.as_json())


# A CSV has no place for the report's warnings (an empty window, say): they travel in this
# header, which `fada report` prints to stderr; the JSON and HTML reports carry them inside.
WARNING_HEADER = "FADA-Report-Warning"


def _warning_header(report: ScoreReport) -> dict[str, str]:
    warnings = " | ".join(report.filters.warnings)
    return {WARNING_HEADER: warnings.encode("ascii", "replace").decode()} if warnings else {}


@router.get("/v1/reports/scores.html", response_class=HTMLResponse,
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}}})
def scores_html(request: Request, ctx: Ctx, caller: QA, from_: From = None, to: To = None, mode: Mode = None,
                tz: Tz = None, group_by: GroupByParam = None) -> HTMLResponse:
    """The score report as a page for people: a filter form, the table, charts (distribution
    per dimension and mode, mean per day, per view label, per model revision) and the
    agreement table. Self-contained: inline CSS and SVG, no scripts, no external assets.

    Open it in a browser: the report routes also take the key as the password of HTTP Basic
    credentials (any user name), and their 401 asks the browser to sign in."""
    report = _report(request, ctx, from_, to, mode, tz, group_by, format="html")
    return HTMLResponse(render_html(report), headers={"Content-Security-Policy": "default-src 'none'; "
                                                      "style-src 'unsafe-inline'; img-src data:; form-action 'self'",
                                                      **_warning_header(report)})
