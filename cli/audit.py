"""``fada audit``: the audit trail from a running service, as CSV or JSON lines, every page of
``GET /v1/audit`` (admin key) newest first. For a privacy officer's "who opened this job's
result?" (``--job``) or "what did this key do in March?" (``--key``, ``--from``, ``--to``).

Exit codes: 0 written; 2 refused parameters (the server's 422 or 404 for an unknown key, or no
key); 3 the key was refused (401, or 403: not an admin key); 4 the service could not be
reached; 5 any other answer from the service.
"""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from cli.client import (
    DEFAULT_URL,
    ApiError,
    FadaClient,
    Forbidden,
    InvalidRequest,
    NotFound,
    TransportError,
    Unauthorized,
)
from cli.files import write_atomically

EXIT_USAGE, EXIT_AUTH, EXIT_UNREACHABLE, EXIT_SERVER = 2, 3, 4, 5
PAGE = 500
COLUMNS = ("at", "key_name", "key_prefix", "key_role", "action", "outcome", "status", "job_id", "client",
           "user_agent", "request_id", "event_id")


class Outcome(enum.StrEnum):
    ok = "ok"
    denied = "denied"
    rejected = "rejected"
    error = "error"


class AuditFormat(enum.StrEnum):
    csv = "csv"
    jsonl = "jsonl"


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _events(client: FadaClient, filters: dict[str, Any]) -> Iterator[dict[str, Any]]:
    cursor = None
    while True:
        page = client.audit_events(**filters, limit=PAGE, cursor=cursor)
        yield from page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return


def _row(event: dict[str, Any]) -> list[Any]:
    key = event.get("api_key") or {}
    detail = event.get("detail") or {}
    # The prefix of the secret presented (after a rotation, the old or the new one; an unknown
    # key's too), or the key's prefix when fada keys changed it; else the key's prefix now.
    prefix = detail.get("presented_prefix") or detail.get("key_prefix") or key.get("prefix", "")
    return [event["at"], key.get("name", ""), prefix, key.get("role", ""), event["action"],
            event["outcome"], detail.get("status", ""), event.get("job_id") or "", detail.get("client", ""),
            detail.get("user_agent", ""), event.get("request_id") or "", event["id"]]


def _render(events: list[dict[str, Any]], format_: AuditFormat) -> str:
    if format_ is AuditFormat.jsonl:
        return "".join(json.dumps(event, ensure_ascii=False) + "\n" for event in events)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(_row(event) for event in events)
    return text.getvalue()


def audit(
    job: Annotated[str | None, typer.Option("--job", help="only requests naming this job id")] = None,
    acting_key: Annotated[str | None, typer.Option("--by", help="only requests made with this key (its id "
                                                   "or prefix, as `fada keys list` shows them)")] = None,
    action: Annotated[str | None, typer.Option(help="only this method and route, e.g. "
                                               "'GET /v1/jobs/{job_id}/result'")] = None,
    outcome: Annotated[Outcome | None, typer.Option(help="only this outcome")] = None,
    from_: Annotated[str | None, typer.Option("--from", help="at or after this date (its start in --tz) or "
                                              "RFC 3339 time")] = None,
    to: Annotated[str | None, typer.Option("--to", help="before this time; a date alone includes that whole "
                                           "day in --tz")] = None,
    tz: Annotated[str | None, typer.Option("--tz", help="IANA time zone of dates (Europe/Paris); default: the "
                                           "service's FADA_REPORT_TIMEZONE")] = None,
    format_: Annotated[AuditFormat, typer.Option("--format", help="csv (one row per request) or jsonl (each "
                                                 "event whole)")] = AuditFormat.csv,
    out: Annotated[Path | None, typer.Option("--out", help="file to write, whole or not at all (default: "
                                             "standard output)", dir_okay=False)] = None,
    url: Annotated[str, typer.Option(envvar="FADA_URL", help="the service's base URL")] = DEFAULT_URL,
    key: Annotated[str | None, typer.Option(envvar="FADA_API_KEY", show_default=False,
                                            help="an admin API key")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each page", min=1)] = 60.0,
) -> None:
    """Download the audit trail (admin key): who did what to which job, newest first.

    Exit codes: 0 written; 2 refused parameters or no key; 3 key refused (401) or not admin
    (403); 4 service unreachable; 5 any other error answer from the service.
    """
    if not key:
        _fail("no API key: pass --key or set FADA_API_KEY (an admin key)", EXIT_USAGE)
    filters = {"job_id": job, "key": acting_key, "action": action, "outcome": outcome.value if outcome else None,
               "from_": from_, "to": to, "tz": tz}
    try:
        with FadaClient(url, key, timeout=timeout) as client:
            events = list(_events(client, filters))
    except Unauthorized as exc:
        _fail(f"the service at {url} refused the API key ({exc.detail}); check --key or FADA_API_KEY", EXIT_AUTH)
    except Forbidden as exc:
        _fail(f"this API key may not read the audit trail ({exc.detail}); it needs an admin key", EXIT_AUTH)
    except (InvalidRequest, NotFound) as exc:
        _fail(f"the service refused the filters ({exc.status}: {exc.detail})", EXIT_USAGE)
    except ApiError as exc:
        _fail(f"the service at {url} answered {exc}", EXIT_SERVER)
    except TransportError as exc:
        _fail(f"cannot reach the service at {url} ({exc}); is it running? (set --url or FADA_URL)",
              EXIT_UNREACHABLE)
    text = _render(events, format_)
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        write_atomically(out, text.encode())
    except FileNotFoundError as exc:
        _fail(f"cannot write {out}: {exc}", EXIT_USAGE)
    typer.echo(f"wrote {out} ({len(events)} events, {format_.value})", err=True)
