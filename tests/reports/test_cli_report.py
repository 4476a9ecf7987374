"""``fada report`` against a real uvicorn server: CSV and HTML files written, standard output,
the environment variables, and clear, non-zero exits for a refused key, a forbidden role,
refused parameters and an unreachable service."""

from __future__ import annotations

import csv
import io
import socket
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest
import typer
from fastapi import FastAPI
from typer.testing import CliRunner

from cli.report import report
from tests.api.conftest import Keys

from .helpers import Seeder, seed_model_card

runner = CliRunner()

# The command as `fada` registers it (cli/main.py: app.command("report")(report)).
fada = typer.Typer(add_completion=False)
fada.command("report")(report)


@fada.callback()
def _fada() -> None:
    """fada"""


@pytest.fixture
def base(sqlite_app: FastAPI, sqlite_seeder: Seeder, serve: Callable[[FastAPI], str]) -> str:
    seed_model_card(sqlite_seeder)
    return serve(sqlite_app)


def test_csv_and_html_files_are_written(base: str, sqlite_keys: Keys, tmp_path: Path) -> None:
    key = sqlite_keys.qa.secret
    out = tmp_path / "scores.csv"
    done = runner.invoke(fada, ["report", "--url", base, "--key", key, "--mode", "hitl", "--from", "2026-03-01",
                                "--to", "2026-03-31", "--format", "csv", "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert f"wrote {out}" in done.stderr
    (row,) = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert (row["key"], row["cases"], row["interpretation_mean"], row["annotation_mean"], row["overall_mean"]) == \
        ("all", "49", "1.286", "1.449", "1.368")

    page = tmp_path / "scores.html"
    done = runner.invoke(fada, ["report", "--format", "html", "--group-by", "mode", "--out", str(page)],
                         env={"FADA_URL": base, "FADA_API_KEY": sqlite_keys.admin.secret})
    assert done.exit_code == 0, done.output
    html = page.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and 'id="scores"' in html and "<svg" in html
    assert "1.368" in html and "73.5%" in html


def test_without_out_the_report_goes_to_standard_output(base: str, sqlite_keys: Keys) -> None:
    done = runner.invoke(fada, ["report", "--group-by", "reviewer"],
                         env={"FADA_URL": base + "/", "FADA_API_KEY": sqlite_keys.qa.secret})
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(io.StringIO(done.stdout, newline="")))
    assert [r["key"] for r in rows] == ["sono-1"] and rows[0]["cases"] == "54"


def test_tz_reaches_the_service(base: str, sqlite_keys: Keys) -> None:
    """Pago Pago is UTC-11: every review's local date is the UTC date's day before."""
    def day_keys(*tz: str) -> list[str]:
        done = runner.invoke(fada, ["report", "--url", base, "--key", sqlite_keys.qa.secret, "--group-by", "day",
                                    *tz])
        assert done.exit_code == 0, done.output
        return [row["key"] for row in csv.DictReader(io.StringIO(done.stdout, newline=""))]

    utc, pago_pago = day_keys(), day_keys("--tz", "Pacific/Pago_Pago")
    assert utc and [str(date.fromisoformat(d) - timedelta(days=1)) for d in utc] == pago_pago
    refused = runner.invoke(fada, ["report", "--url", base, "--key", sqlite_keys.qa.secret, "--tz", "Mars/Olympus"])
    assert refused.exit_code == 2 and "tz" in refused.stderr


@pytest.mark.parametrize("format_", ["csv", "html"])
def test_an_empty_window_is_written_with_a_warning_on_stderr(base: str, sqlite_keys: Keys, tmp_path: Path,
                                                             format_: str) -> None:
    """--from after --to is a window with no reviews: still a report (exit 0), but the person
    who typed it is told, as the JSON report tells a program."""
    out = tmp_path / f"scores.{format_}"
    done = runner.invoke(fada, ["report", "--url", base, "--key", sqlite_keys.qa.secret, "--from", "2026-12-04",
                                "--to", "2026-12-01", "--format", format_, "--out", str(out)])
    assert done.exit_code == 0, done.output
    assert "warning: the window is empty: 'from' (2026-12-04T00:00:00Z) is not before 'to'" in done.stderr
    assert out.exists()
    fine = runner.invoke(fada, ["report", "--url", base, "--key", sqlite_keys.qa.secret, "--from", "2026-03-01",
                                "--format", format_, "--out", str(out)])
    assert fine.exit_code == 0 and "warning" not in fine.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_failures_exit_non_zero_with_a_clear_message(base: str, sqlite_keys: Keys, tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "never.csv"

    def run(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, str]:
        done = runner.invoke(fada, ["report", "--out", str(out), *args],
                             env={"FADA_URL": base, "FADA_API_KEY": None, **(env or {})})
        return done.exit_code, done.stderr

    code, message = run("--key", "fada_not-a-key")
    assert code == 3 and "refused the API key (401" in message and "FADA_API_KEY" in message
    code, message = run("--key", sqlite_keys.reviewer.secret)
    assert code == 3 and "403" in message and "qa or admin" in message
    code, message = run(env={"FADA_API_KEY": sqlite_keys.submitter.secret})
    assert code == 3 and "403" in message
    code, message = run("--key", sqlite_keys.qa.secret, "--from", "last week")
    assert code == 2 and "422" in message and "from" in message
    code, message = run()
    assert code == 2 and "no API key" in message
    code, message = run("--key", sqlite_keys.qa.secret, "--url", f"http://127.0.0.1:{_free_port()}")
    assert code == 4 and "cannot reach the service" in message
    code, message = run("--key", sqlite_keys.qa.secret, "--mode", "robot")
    assert code == 2 and "robot" in message  # refused by the command itself
    assert list(folder.iterdir()) == []  # nothing written, no partial file
