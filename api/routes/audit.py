"""``/v1/audit``: the audit trail read back (role admin): who did what to which job.

Filters: ``job_id``, ``key`` (a key's id or prefix, as ``fada keys list`` shows them),
``action`` (the method and route template, ``GET /v1/jobs/{job_id}/result``), ``outcome``,
``from`` (inclusive) and ``to`` (exclusive), read as the score reports read them (a date is
that whole day in ``tz``). Newest first; ``next_cursor`` pages on. Reading the trail is itself
recorded in it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from services.audit_trail import AuditFilters, list_events
from services.keys import UnknownKey, find_key
from services.reports import ReportParameterError, parse_bound, parse_zone
from shared.db.models import Role

from ..context import Caller
from ..deps import BOUND_SCHEMA, ID_MAX, NO_NUL, TZ_SCHEMA, Ctx, require
from ..problems import PROBLEM, Problem
from ..schemas import AuditEventOut, AuditPageOut

router = APIRouter(prefix="/v1/audit", tags=["audit"])

Admin = Annotated[Caller, Depends(require(Role.admin))]
From = Annotated[str | None, Query(
    alias="from", max_length=64, json_schema_extra=BOUND_SCHEMA,
    description="Events at or after this instant (inclusive). RFC 3339 date (the start of that day in tz) or "
                "datetime with Z or an offset.")]
To = Annotated[str | None, Query(
    max_length=64, json_schema_extra=BOUND_SCHEMA,
    description="Events before this instant (exclusive). A date alone includes that whole day in tz.")]
Tz = Annotated[str | None, Query(
    max_length=64, examples=["Europe/Paris"], json_schema_extra=TZ_SCHEMA,
    description="IANA time zone in which dates are read; empty: the service's FADA_REPORT_TIMEZONE")]


@router.get("", response_model=AuditPageOut, responses={404: PROBLEM})
def list_(
    request: Request,
    ctx: Ctx,
    caller: Admin,
    job_id: Annotated[str | None, Query(max_length=ID_MAX, pattern=NO_NUL)] = None,
    key: Annotated[str | None, Query(max_length=ID_MAX, pattern=NO_NUL,
                                     description="the acting key's id or prefix")] = None,
    action: Annotated[str | None, Query(max_length=64, pattern=NO_NUL,
                                        examples=["GET /v1/jobs/{job_id}/result"])] = None,
    outcome: Literal["ok", "denied", "rejected", "error"] | None = None,
    from_: From = None,
    to: To = None,
    tz: Tz = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> AuditPageOut:
    """Audit events, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    try:
        zone = parse_zone(tz, ctx.settings.report_timezone)
        start, end = parse_bound("from", from_, end=False, zone=zone), parse_bound("to", to, end=True, zone=zone)
    except ReportParameterError as exc:
        raise Problem(422, "invalid_request", str(exc),
                      errors=[{"loc": ["query", exc.param], "msg": exc.message, "type": "value_error"}]) from exc
    with ctx.sm() as session:
        key_id = None
        if key is not None:
            try:
                key_id = find_key(session, key).id
            except UnknownKey as exc:
                raise Problem(404, "key_not_found", str(exc)) from exc
        page = list_events(session, AuditFilters(job_id=job_id, api_key_id=key_id, action=action, outcome=outcome,
                                                 start=start, end=end), limit=limit, cursor=cursor)
        return AuditPageOut(items=[AuditEventOut.of(e.event, e.key) for e in page.items],
                            next_cursor=page.next_cursor)
