"""Refusing request parts a /v1 route does not take: unknown query parameters and form fields,
a single-valued one sent more than once, and a form field sent empty (except by the browser
pages' forms under ``/v1/reports/``, where an empty field is one left blank).

FastAPI ignores the unknown and keeps the last of a repeated one. A misspelt filter
(``?stauts=failed``, ``?group-by=label``) would answer with everything, or with the default
grouping; a misspelt form field (``-F mdoe=hitl``) would run the job in the default mode; two
``file`` parts to ``POST /v1/jobs`` would analyse the second and drop the first unseen; each
looks like a right answer. JSON bodies are strict already (their models forbid extra fields).
The names a route takes, and which of them are lists, are read from its OpenAPI operation:
what callers code against.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute

from .credentials import BROWSER_PREFIX
from .problems import Problem

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


@dataclass(frozen=True)
class Takes:
    """What one route documents: its query parameters and, if it has a form body, its fields."""

    query: frozenset[str]
    form: frozenset[str] | None
    lists: frozenset[str] = frozenset()  # the names that may come more than once (array-typed)


async def known_inputs_only(request: Request) -> None:
    """422 naming the query parameters and form fields the route does not take."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    takes = route_takes(request.app, route)
    query = [name for name, _ in request.query_params.multi_items()]
    _refuse("query parameter", query, takes.query, "unknown_query_parameter")
    _refuse_repeats("query parameter", query, takes.lists, "repeated_query_parameter")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if takes.form is not None and content_type in FORM_TYPES:
        form = await request.form()  # parsed already by FastAPI for the route: Starlette keeps it
        fields = [name for name, _ in form.multi_items()]
        _refuse("form field", fields, takes.form, "unknown_form_field")
        _refuse_repeats("form field", fields, takes.lists, "repeated_form_field")
        if not request.url.path.startswith(BROWSER_PREFIX):  # a browser's form sends every field, empty or not
            _refuse_empty([name for name, value in form.multi_items() if value == ""])


def document_strict_forms(app: FastAPI) -> None:
    """Say in the OpenAPI document what ``known_inputs_only`` enforces: the form bodies of /v1
    routes take no other fields (``additionalProperties: false``), so generated clients and
    schema-driven tests know it."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()  # FastAPI keeps it as app.openapi_schema: marked once, in place
        for path, item in document["paths"].items():
            for operation in item.values() if path.startswith("/v1/") else ():
                schema = _form_schema(document, operation)
                if schema is not None:
                    schema["additionalProperties"] = False
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def route_takes(app: FastAPI, route: APIRoute) -> Takes:
    """The route's documented inputs, worked out once per app and route."""
    cache: dict[tuple[str, frozenset[str]], Takes] | None = getattr(app.state, "route_takes", None)
    if cache is None:
        cache = app.state.route_takes = {}
    methods = frozenset(route.methods or ())
    key = (route.path_format, methods)
    if key not in cache:
        document = app.openapi()
        operations = [document["paths"].get(route.path_format, {}).get(m.lower(), {}) for m in methods]
        parameters = [p for op in operations for p in op.get("parameters", []) if p.get("in") == "query"]
        forms = [schema for op in operations if (schema := _form_schema(document, op)) is not None]
        fields = {name: field for schema in forms for name, field in schema.get("properties", {}).items()}
        lists = {p["name"] for p in parameters if _is_array(p.get("schema", {}))}
        lists |= {name for name, field in fields.items() if _is_array(field)}
        cache[key] = Takes(query=frozenset(p["name"] for p in parameters),
                           form=frozenset(fields) if forms else None, lists=frozenset(lists))
    return cache[key]


def _form_schema(document: dict[str, Any], operation: dict[str, Any]) -> dict[str, Any] | None:
    """The operation's form body schema (``$ref`` resolved), or None without a form body."""
    content = operation.get("requestBody", {}).get("content", {}) if isinstance(operation, dict) else {}
    schema: dict[str, Any] | None = next((content[t]["schema"] for t in FORM_TYPES if t in content), None)
    ref = (schema or {}).get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return schema


def _refuse(what: str, sent: Iterable[str], allowed: frozenset[str], code: str) -> None:
    unknown = sorted(set(sent) - allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) or "none"
        raise Problem(422, code, f"unknown {what}(s) {', '.join(unknown)}; this route takes: {takes}",
                      unknown=unknown)


def _refuse_repeats(what: str, sent: list[str], lists: frozenset[str], code: str) -> None:
    repeated = sorted({name for name in sent if name not in lists and sent.count(name) > 1})
    if repeated:
        raise Problem(422, code, f"{what}(s) sent more than once: {', '.join(repeated)}; each takes one value",
                      repeated=repeated)


def _refuse_empty(empty: list[str]) -> None:
    # FastAPI reads an empty form value as "not sent": `-F mode=$MODE` with MODE unset would
    # run the job autonomously, `-F frame=` would analyse frame 0. Leaving the field out says that.
    if empty:
        names = sorted(set(empty))
        detail = f"form field(s) {', '.join(names)} sent empty; leave a field out to take its default"
        raise Problem(422, "empty_form_field", detail, empty=names)


def _is_array(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "array" or any(s.get("type") == "array" for s in schema.get("anyOf", []))
