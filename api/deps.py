"""FastAPI dependencies: the app context and the caller's role check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPBearer

from services.keys import allows
from shared.db.models import Role

from .context import AppContext, Caller
from .problems import Problem
from .strict_inputs import known_inputs_only

# PostgreSQL text cannot hold NUL; refusing it at the edge gives a 422 instead of a 500 there.
NO_NUL = r"^[^\x00]*$"
ID_MAX = 64
JobId = Annotated[str, Path(max_length=ID_MAX, pattern=NO_NUL, description="job id")]
BatchId = Annotated[str, Path(max_length=ID_MAX, pattern=NO_NUL, description="batch id")]
EvaluationId = Annotated[str, Path(max_length=ID_MAX, pattern=NO_NUL, description="evaluation id")]

# Documents the bearer scheme in OpenAPI; the middleware does the checking (before the body
# is read), so this never refuses anything itself.
bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <api key>")
V1_DEPENDENCIES = [Depends(bearer), Depends(known_inputs_only)]


def get_ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


Ctx = Annotated[AppContext, Depends(get_ctx)]


def require(*roles: Role) -> Callable[[Request], Caller]:
    """A dependency giving the authenticated caller, or 403 when its role is not one of
    ``roles`` (admin always passes). The middleware has answered 401 already if no key."""
    names = ", ".join(r.value for r in roles)

    def dependency(request: Request) -> Caller:
        caller: Caller | None = getattr(request.state, "caller", None)
        if caller is None:  # only reachable if the route is mounted outside /v1
            raise Problem(401, "unauthorized", "missing API key")
        if not allows(caller.role, *roles):
            raise Problem(403, "forbidden", f"this needs the role {names} (or admin); the key has {caller.role}")
        return caller

    return dependency


def set_audit_job(request: Request, job_id: str, **detail: object) -> None:
    """Name the job (and any detail) the audit event of this request is about."""
    request.state.audit_job_id = job_id
    if detail:
        request.state.audit_detail = {**(getattr(request.state, "audit_detail", None) or {}), **detail}
