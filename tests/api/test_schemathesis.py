"""Property-based checks of the whole API against its own OpenAPI document (schemathesis):
no 5xx for any generated request, and every response conforms to the documented schema
(status code, content type, body schema, headers), with every built-in check of schemathesis.
SQLite only, with an admin key (which passes every role check); the database holds a queued
job, a succeeded job with a result and a batch, so the path operations also answer 200/409,
not only 404.

Each operation is a test of its own, driven by ``APIOperation.as_strategy()`` under Hypothesis.
(schemathesis' lazy pytest loader, ``schemathesis.pytest.from_fixture``, does not run under
pytest 9: it writes ``request.node._nodeid``, which pytest 9 no longer has.)

Failures that schemathesis finds are all reported, except those listed in ``TOLERATED``:
constraints the OpenAPI document cannot express (an image's content, an opaque cursor), and
artefacts of how a query string carries values: an object-valued parameter, and a free-text
parameter turned into another type (which the query string sends as text all the same).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.core.failures import AcceptedNegativeData, Failure, FailureGroup
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from services.ingest import IngestError
from services.workers import beat
from shared.settings import Settings

from .conftest import Key, close_app, make_keys, make_settings, open_sessions
from .helpers import PROVENANCE, file_part, png, succeed_job

MAX_EXAMPLES = 25
PROBLEM_TYPE = "application/problem+json"
INGEST_CODES = {cls.code for cls in IngestError.__subclasses__()} | {IngestError.code}


# schemathesis cannot write multipart/related bodies; STOW-RS has its own tests (test_dicomweb.py).
UNSERIALISABLE = {("POST", "/dicomweb/studies")}


def _document() -> dict[str, Any]:
    """The OpenAPI document; building it touches no database."""
    app = create_app(Settings(data_dir=Path("/nonexistent"), database_url="sqlite://", broker_url="memory://"))
    try:
        return app.openapi()
    finally:
        close_app(app)


DOCUMENT = _document()
OPERATIONS = sorted((method.upper(), path) for path, item in DOCUMENT["paths"].items() for method in item
                    if (method.upper(), path) not in UNSERIALISABLE)


def _is_free_text(schema: dict[str, Any]) -> bool:
    """A string with at most length and pattern constraints (null allowed): any text is its type."""
    members = [m for m in schema.get("anyOf", [schema]) if m.get("type") != "null"]
    return bool(members) and all(m.get("type") == "string" and not {"enum", "format", "$ref"} & m.keys()
                                 for m in members)


# ("METHOD path", name) of every free-text query parameter of the document.
FREE_TEXT_QUERY = {(f"{method.upper()} {path}", parameter["name"])
                   for path, item in DOCUMENT["paths"].items() for method, operation in item.items()
                   for parameter in operation.get("parameters", [])
                   if parameter["in"] == "query" and _is_free_text(parameter.get("schema", {}))}
# Operations whose inputs carry constraints, so that schemathesis can make invalid requests.
NEGATIVE_OPERATIONS = [("GET", "/v1/jobs"), ("POST", "/v1/batches"), ("POST", "/v1/jobs")]


@dataclass(frozen=True)
class Seeded:
    admin: Key
    queued_job: str
    succeeded_job: str
    batch: str


@pytest.fixture
def sqlite_sm(sqlite_db_url: str) -> Iterator[sessionmaker[Session]]:
    yield from open_sessions(sqlite_db_url)


@pytest.fixture
def app(sqlite_db_url: str, tmp_path: Path, broker_url: str) -> Iterator[FastAPI]:
    app = create_app(make_settings(sqlite_db_url, tmp_path, broker_url, max_body_bytes=256 * 1024))
    yield app
    close_app(app)


@pytest.fixture
def seeded(app: FastAPI, sqlite_sm: sessionmaker[Session]) -> Seeded:
    from fastapi.testclient import TestClient

    admin = make_keys(sqlite_sm).admin
    with TestClient(app) as client:
        queued = client.post("/v1/jobs", files=file_part(png(1)), headers=admin.headers).json()["id"]
        succeeded = client.post("/v1/jobs", files=file_part(png(2)), headers=admin.headers).json()["id"]
        batch = client.post("/v1/batches", files=[("file", ("a.png", png(3), "image/png"))],
                            headers=admin.headers).json()["id"]
    succeed_job(sqlite_sm, succeeded)
    with sqlite_sm.begin() as session:  # a live worker, so that /readyz is 200
        beat(session, "fuzz:1:gpu", provenance=PROVENANCE, queues="gpu")
    return Seeded(admin=admin, queued_job=queued, succeeded_job=succeeded, batch=batch)


# --- what is tolerated, and why -------------------------------------------------------------


def _problem_code(response: schemathesis.Response) -> str | None:
    if not response.headers.get("content-type", [""])[0].startswith(PROBLEM_TYPE):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def _has_unnamed_query_parameter(response: schemathesis.Response) -> bool:
    query = urlsplit(str(response.request.url)).query
    return any(part.startswith("=") or part == "" for part in query.split("&")) if query else False


# The lines of an ST201 message that name what the negative case made invalid.
_QUERY_TYPE = re.compile(r"^- query: violates `type` at /properties/([A-Za-z_][A-Za-z0-9_]*)")
_KEY_REMOVED = "- header: violates `required` (was Authorization)"  # every call sends the key again


def _only_text_in_the_query(failure: Failure, op: str) -> bool:
    """A negative case that turned a free-text query parameter into a boolean, number or array
    (``batch_id``: null became [false]) goes on the wire as text (``?batch_id=false``), which is
    a valid value: accepting it is right. True when every invalid component is such a change."""
    if failure.code != "ST201":
        return False
    components = [line.strip() for line in failure.message.splitlines() if line.strip().startswith("- ")]
    names = [m.group(1) for line in components if (m := _QUERY_TYPE.match(line))]
    return bool(names) and all((op, name) in FREE_TEXT_QUERY for name in names) and all(
        _QUERY_TYPE.match(line) or line == _KEY_REMOVED for line in components)


EVALUATION_CODES = {"invalid_ground_truth", "empty_ground_truth", "unknown_category", "unknown_view_label",
                    "unknown_jobs", "jobs_not_finished", "image_size_mismatch"}

Tolerance = Callable[[Failure, schemathesis.Response, str], bool]  # (failure, response, "METHOD path")

TOLERATED: dict[str, Tolerance] = {
    # The OpenAPI document cannot say "the file must be a PNG, JPEG or DICOM image": a
    # schema-valid upload that is not one is refused (415/422) by design.
    "upload content": lambda f, r, op: (
        f.code == "ST202" and op in ("POST /v1/jobs", "POST /v1/batches") and _problem_code(r) in INGEST_CODES),
    # Nor "a callback URL this deployment calls, for a key with a signing secret".
    "callback target": lambda f, r, op: (
        f.code == "ST202" and op in ("POST /v1/jobs", "POST /v1/batches")
        and _problem_code(r) == "invalid_callback_url"),
    # The cursor is opaque ("any string" in the schema); one the service did not hand out is a 422.
    "opaque cursor": lambda f, r, op: (
        f.code == "ST202" and op in ("GET /v1/jobs", "GET /v1/evaluations", "GET /v1/reviews/queue", "GET /v1/audit",
                                   "GET /v1/reports/queue.html")
        and _problem_code(r) == "invalid_cursor"),
    # Nor "labels from the profile, geometry inside this job's image, a job in a reviewable state".
    "review content": lambda f, r, op: (
        f.code == "ST202" and op in ("POST /v1/jobs/{job_id}/reviews", "PUT /v1/jobs/{job_id}/reviews/{dimension}")
        and _problem_code(r) == "invalid_review"),
    # The external_id pattern names the control characters; the format characters (Unicode Cf,
    # such as U+00AD or U+202E) that the validator refuses too have no class in the patterns the
    # generator reads.
    "format characters": lambda f, r, op: (
        f.code == "ST202" and op in ("POST /v1/jobs", "POST /v1/batches") and _problem_code(r) == "invalid_request"
        and "must be printable text" in r.text),
    # Nor "the image ids are jobs with results, the categories are the profile's".
    "evaluation ground truth": lambda f, r, op: (
        f.code == "ST202" and op == "POST /v1/evaluations" and _problem_code(r) in EVALUATION_CODES),
    # A negative example whose value is an object ({"": null}) is sent exploded as a parameter
    # with an empty name ("&=null"): on the wire the request is valid, so accepting it is right.
    "object-valued query parameter": lambda f, r, op: (
        f.code == "ST201" and op.startswith("GET ") and _has_unnamed_query_parameter(r)),
    # A free-text query parameter turned into another type goes on the wire as text all the same.
    "free text in the query": lambda f, r, op: _only_text_in_the_query(f, op),
}


def _failures(exc: FailureGroup | Failure) -> list[Failure] | None:
    """The check failures that ``exc`` carries; None when it carries something else too."""
    if isinstance(exc, FailureGroup):
        found = [e for e in exc.exceptions if isinstance(e, Failure)]
        return found if len(found) == len(exc.exceptions) else None
    return [exc]


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE], ids=["positive"])
def test_operation_conforms_to_the_schema(app: FastAPI, seeded: Seeded, method: str, path: str,
                                          mode: schemathesis.GenerationMode) -> None:
    _fuzz(app, seeded, method, path, mode)


@pytest.mark.parametrize(("method", "path"), NEGATIVE_OPERATIONS, ids=[f"{m} {p}" for m, p in NEGATIVE_OPERATIONS])
def test_invalid_requests_are_refused_by_the_schema(app: FastAPI, seeded: Seeded, method: str, path: str) -> None:
    _fuzz(app, seeded, method, path, schemathesis.GenerationMode.NEGATIVE)


def _fuzz(app: FastAPI, seeded: Seeded, method: str, path: str, mode: schemathesis.GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # Unknown query parameters are ignored, as most HTTP APIs do (a cache-busting "?_=..." must
    # not break a client); negative cases that only add one would report that as a failure.
    schema.config.generation.update(allow_extra_parameters=False)
    operation = schema[path][method]
    label = f"{method} {path}"
    strategies = [operation.as_strategy(generation_mode=mode)]
    if mode is schemathesis.GenerationMode.POSITIVE:
        # Also ask about the rows that exist, so that 200 and 409 answers are checked too.
        known = {"job_id": [seeded.queued_job, seeded.succeeded_job], "batch_id": [seeded.batch]}
        for name, values in known.items():
            if "{" + name + "}" in path:
                strategies += [operation.as_strategy(generation_mode=mode, path_parameters={name: value})
                               for value in values]
    strategy = st.one_of(strategies)
    headers = seeded.admin.headers

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        case = data.draw(strategy)
        response = case.call(headers=headers, app=app)
        try:
            case.validate_response(response, headers=headers, transport_kwargs={"headers": headers, "app": app})
        except (FailureGroup, Failure) as exc:  # FailureGroup is a BaseExceptionGroup, not an Exception
            failures = _failures(exc)
            if failures is None or any(not any(ok(f, response, label) for ok in TOLERATED.values())
                                       for f in failures):
                raise
        assert response.status_code < 500, (response.status_code, response.text)

    check()


def test_only_text_in_the_query_tolerates_exactly_that() -> None:
    """The seed-6 failure of GET /v1/jobs (``?batch_id=false``, a valid id) is tolerated; a type
    change of a parameter that is not free text (limit), or one with another invalid component
    beside it, is not."""
    def failure(*components: str) -> Failure:
        return AcceptedNegativeData(operation="GET /v1/jobs", message="Invalid data should have been rejected\n"
                                    "Invalid component:\n" + "\n".join(f"  - {c}" for c in components),
                                    status_code=200, expected_statuses=["422"])

    batch = "query: violates `type` at /properties/batch_id/anyOf/1 (was null, became array)"
    assert ("GET /v1/jobs", "batch_id") in FREE_TEXT_QUERY and ("GET /v1/jobs", "limit") not in FREE_TEXT_QUERY
    assert _only_text_in_the_query(failure(batch, "header: violates `required` (was Authorization)"), "GET /v1/jobs")
    assert _only_text_in_the_query(failure(batch), "GET /v1/jobs")
    assert not _only_text_in_the_query(failure(batch), "GET /v1/audit")  # not that operation's parameter
    assert not _only_text_in_the_query(failure("query: violates `type` at /properties/limit (was 5, became [])"),
                                       "GET /v1/jobs")
    assert not _only_text_in_the_query(failure(batch, "query: violates `maxLength` at /properties/cursor"),
                                       "GET /v1/jobs")
    assert not _only_text_in_the_query(failure("header: violates `required` (was Authorization)"), "GET /v1/jobs")
