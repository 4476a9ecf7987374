"""``fada report``: the QA score report from a running service, as CSV or an HTML page.

A thin HTTP client of ``GET /v1/reports/scores?format=csv`` and ``GET /v1/reports/scores.html``;
the service and key come from ``--url``/``--key`` or ``FADA_URL``/``FADA_API_KEY``.

Exit codes: 0 written; 2 refused parameters (the server's 422, or no key); 3 the key was
refused (401 unknown or revoked, 403 a role other than qa/admin); 4 the service could not be
reached (connection, timeout); 5 any other answer from the service.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from cli.files import write_atomically
from services.reports.filters import GroupBy
from shared.db.models import JobMode

if TYPE_CHECKING:
    import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
EXIT_USAGE, EXIT_AUTH, EXIT_UNREACHABLE, EXIT_SERVER = 2, 3, 4, 5


class ReportFormat(enum.StrEnum):
    csv = "csv"
    html = "html"




def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _detail(response: httpx.Response) -> str:
    """The problem document's detail, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return response.text[:200]


def _check(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status < 300:
        return
    detail = _detail(response)
    if status == 401:
        _fail(f"the service at {url} refused the API key (401: {detail}); check --key or FADA_API_KEY", EXIT_AUTH)
    if status == 403:
        _fail(f"this API key may not read reports (403: {detail}); reports need a qa or admin key", EXIT_AUTH)
    if status == 422:
        _fail(f"the service refused the report parameters (422: {detail})", EXIT_USAGE)
    _fail(f"the service at {url} answered {status} {response.reason_phrase}: {detail}", EXIT_SERVER)


def report(
    from_: Annotated[str | None, typer.Option("--from", help="reviews created at or after this date "
                                              "(2026-03-01, its start in --tz) or RFC 3339 time (inclusive)")] = None,
    to: Annotated[str | None, typer.Option("--to", help="reviews created before this time; a date alone "
                                           "includes that whole day in --tz")] = None,
    mode: Annotated[JobMode | None, typer.Option(help="only jobs of this mode")] = None,
    tz: Annotated[str | None, typer.Option("--tz", help="IANA time zone of dates and days (Europe/Paris); "
                                           "default: the service's FADA_REPORT_TIMEZONE")] = None,
    group_by: Annotated[GroupBy | None, typer.Option("--group-by", help="one row per value")] = None,
    format_: Annotated[ReportFormat, typer.Option("--format", help="csv (a table) or html (a page with "
                                                  "charts)")] = ReportFormat.csv,
    out: Annotated[Path | None, typer.Option("--out", help="file to write (default: standard output)",
                                             dir_okay=False)] = None,
    url: Annotated[str, typer.Option(envvar="FADA_URL", help="the service's base URL")] = DEFAULT_URL,
    key: Annotated[str | None, typer.Option(envvar="FADA_API_KEY", show_default=False,
                                            help="a qa or admin API key")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the service", min=1)] = 60.0,
) -> None:
    """Download the sonographer score report (qa key): CSV, or a self-contained HTML page.

    Exit codes: 0 written; 2 refused parameters or no key; 3 key refused (401) or not qa/admin
    (403); 4 service unreachable; 5 any other error answer from the service.
    """
    import httpx

    if not key:
        _fail("no API key: pass --key or set FADA_API_KEY (a qa or admin key)", EXIT_USAGE)
    base = url.rstrip("/")
    path = "/v1/reports/scores.html" if format_ is ReportFormat.html else "/v1/reports/scores"
    params = {name: value for name, value in (("from", from_), ("to", to), ("mode", mode), ("tz", tz),
                                              ("group_by", group_by)) if value}
    if format_ is ReportFormat.csv:
        params["format"] = "csv"
    try:
        response = httpx.get(base + path, params=params, headers={"Authorization": f"Bearer {key}"},
                             timeout=timeout)
    except httpx.TimeoutException:
        _fail(f"the service at {base} did not answer within {timeout:g} s", EXIT_UNREACHABLE)
    except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
        _fail(f"cannot reach the service at {base} ({exc}); is it running? (set --url or FADA_URL)",
              EXIT_UNREACHABLE)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        _fail(f"bad service URL {url!r}: {exc}", EXIT_USAGE)
    except httpx.HTTPError as exc:
        _fail(f"request to {base} failed: {exc}", EXIT_UNREACHABLE)
    _check(response, base)
    warning = response.headers.get("FADA-Report-Warning")  # e.g. an empty window: still a report, exit 0
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    if out is None:
        typer.echo(response.text, nl=False)
        return
    try:
        write_atomically(out, response.content)
    except FileNotFoundError as exc:
        _fail(f"cannot write {out}: {exc}", EXIT_USAGE)
    typer.echo(f"wrote {out} ({len(response.content)} bytes, {format_.value})", err=True)
