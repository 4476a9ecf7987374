"""The route template a request would reach, for requests answered before routing.

The gateway refuses a request without a valid key (401, 403) before the router sees it, and
the router is what names a request's route. Metrics and the audit trail label requests by
template (``/v1/jobs/{job_id}``: few label values, no raw ids), so a refused request is matched
here against the templates of the OpenAPI document, which lists every ``/v1`` and
``/dicomweb`` route in the router's order."""

from __future__ import annotations

import re
from typing import Any

from starlette.routing import compile_path
from starlette.types import Scope


def name_refused_route(scope: Scope) -> None:
    """Record the template a request refused before routing would have reached (None: no route
    has its path); its presence also marks the request as refused there."""
    scope.setdefault("state", {})["route_template"] = template_for(scope["app"], scope["path"], scope["method"])


def route_of(scope: Scope) -> str | None:
    """The request's route template: the router's, or the one recorded for a refused request."""
    return getattr(scope.get("route"), "path", None) or scope.get("state", {}).get("route_template")


def template_for(app: Any, path: str, method: str) -> str | None:
    """The template of the route matching path and method; else of one matching the path alone
    (the router would answer 405 there); else None (no route has this path: 404)."""
    partial: str | None = None
    for template, regex, methods in _templates(app):
        if regex.match(path):
            if method in methods or (method == "HEAD" and "GET" in methods):
                return template
            partial = partial or template
    return partial


def _templates(app: Any) -> list[tuple[str, re.Pattern[str], frozenset[str]]]:
    # Built once per app, on its first refused request: the document is cached by FastAPI too.
    table: list[tuple[str, re.Pattern[str], frozenset[str]]] | None = getattr(app.state, "route_templates", None)
    if table is None:
        paths: dict[str, dict[str, Any]] = app.openapi().get("paths", {})
        table = [(template, compile_path(template)[0], frozenset(key.upper() for key in operations))
                 for template, operations in paths.items()]
        app.state.route_templates = table
    return table
