"""FastAPI dependencies: the app context and the caller's role check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated
from zoneinfo import available_timezones

from fastapi import Depends, Path, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from services.keys import allows
from shared.db.models import Role

from .context import AppContext, Caller
from .problems import Problem
from .strict_inputs import known_inputs_only

# PostgreSQL text cannot hold NUL; refusing it at the edge gives a 422 instead of a 500 there.
NO_NUL = r"^[^\x00]*$"
# A caller's reference (accession number, SOP Instance UID) is one line of printable text: a
# control character in it breaks CSV reports, logs and the DICOM SR's text values downstream.
# C1 controls (U+0080-U+009F) included: they are what bytes of invalid UTF-8 become when the
# form parser falls back to Latin-1.
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f]*$"
ID_MAX = 64
# What the schema admits for a time bound (reports, the audit trail): a date, a datetime
# (RFC 3339, with an offset), or empty.
BOUND_SCHEMA = {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"},
                          {"type": "string", "maxLength": 0}]}
# The zones this host knows (its zoneinfo, or the tzdata package): the document lists them, so a
# client (or the docs page) offers a choice instead of a free text that may name no zone.
TZ_SCHEMA = {"anyOf": [{"type": "string", "enum": sorted(available_timezones())},
                       {"type": "string", "maxLength": 0}]}
JobId = Annotated[str, Path(max_length=ID_MAX, pattern=NO_NUL, description="job id")]
BatchId = Annotated[str, Path(max_length=ID_MAX, pattern=NO_NUL, description="batch id")]
EvaluationId = Annotated[str, Path(max_length=ID_MAX, pattern=NO_NUL, description="evaluation id")]

# Documents the bearer scheme in OpenAPI; the middleware does the checking (before the body
# is read), so this never refuses anything itself.
bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <api key>")


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


class RoleCheck:
    """The dependency ``require`` gives: the authenticated caller, or 403 when its role is not
    one of ``roles`` (admin always passes). The middleware has answered 401 already if no key."""

    def __init__(self, roles: tuple[Role, ...]) -> None:
        self.roles = roles

    def __call__(self, request: Request) -> Caller:
        caller: Caller | None = getattr(request.state, "caller", None)
        if caller is None:  # only reachable if the route is mounted outside /v1
            raise Problem(401, "unauthorized", "missing API key")
        if not allows(caller.role, *self.roles):
            names = ", ".join(r.value for r in self.roles)
            raise Problem(403, "forbidden", f"this needs the role {names} (or admin); the key has {caller.role}")
        return caller


def require(*roles: Role) -> Callable[[Request], Caller]:
    return RoleCheck(roles)


async def roles_first(request: Request) -> None:
    """Run the route's role checks before anything else looks at its inputs: a known key with
    the wrong role gets 403, not a 422 that would also list what the route takes. (FastAPI
    parses a JSON or form body before any dependency, so a body that does not parse is still
    refused with 422 first.)"""
    route = request.scope.get("route")
    if isinstance(route, APIRoute):
        for check in _role_checks(route.dependant):
            check(request)


def _role_checks(dependant: Dependant) -> list[RoleCheck]:
    found = [d.call for d in dependant.dependencies if isinstance(d.call, RoleCheck)]
    return found + [c for d in dependant.dependencies for c in _role_checks(d)]


# Every /v1 route: the bearer scheme documented, the role checked, unknown inputs refused.
V1_DEPENDENCIES = [Depends(bearer), Depends(roles_first), Depends(known_inputs_only)]


def set_audit_job(request: Request, job_id: str, **detail: object) -> None:
    """Name the job (and any detail) the audit event of this request is about."""
    request.state.audit_job_id = job_id
    if detail:
        request.state.audit_detail = {**(getattr(request.state, "audit_detail", None) or {}), **detail}
