"""``fada audit`` against a real uvicorn server: every page of the trail as CSV or JSON lines,
the filters passed through, and clear exits for a non-admin key, refused filters and an
unreachable service."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from cli import audit as audit_module
from cli.main import app as fada
from tests.worker.processes import free_port

from .conftest import AppFactory, Keys, Serve
from .helpers import file_part, png

runner = CliRunner()


@pytest.fixture
def base(make_app: AppFactory, serve: Serve) -> str:
    app: FastAPI = make_app()
    return serve(app)


def test_every_page_of_a_jobs_trail_as_csv_and_jsonl(base: str, keys: Keys, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "PAGE", 2)  # several pages from a few events
    with httpx.Client(base_url=base) as http:
        job_id = http.post("/v1/jobs", files=file_part(png(1)), headers=keys.submitter.headers).json()["id"]
        for _ in range(3):
            http.get(f"/v1/jobs/{job_id}", headers=keys.reviewer.headers)
        # Through a reverse proxy on this host (trusted by uvicorn's default FORWARDED_ALLOW_IPS):
        # the workstation's address is the one recorded.
        http.get(f"/v1/jobs/{job_id}/result", headers={**keys.qa.headers, "X-Forwarded-For": "10.20.30.40",
                                                        "User-Agent": "ward-viewer/2.1"})
        http.post("/v1/jobs", files=file_part(png(2)), headers=keys.submitter.headers)  # another job

    done = runner.invoke(fada, ["audit", "--url", base, "--key", keys.admin.secret, "--job", job_id])
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [(r["action"], r["key_name"], r["status"]) for r in rows] == [
        ("GET /v1/jobs/{job_id}/result", "qa", "409")] + [("GET /v1/jobs/{job_id}", "reviewer", "200")] * 3 + [
        ("POST /v1/jobs", "submitter", "202")]
    assert {r["job_id"] for r in rows} == {job_id} and all(r["request_id"] and r["at"] for r in rows)
    assert (rows[0]["client"], rows[0]["user_agent"]) == ("10.20.30.40", "ward-viewer/2.1")
    assert rows[1]["client"] == "127.0.0.1" and rows[1]["user_agent"].startswith("python-httpx/")

    out = tmp_path / "trail.jsonl"
    done = runner.invoke(fada, ["audit", "--by", keys.reviewer.id, "--format", "jsonl", "--out", str(out)],
                         env={"FADA_URL": base, "FADA_API_KEY": keys.admin.secret})
    assert done.exit_code == 0, done.output
    assert "wrote" in done.stderr and "3 events" in done.stderr
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["api_key"]["role"] for e in events] == ["reviewer"] * 3


def test_clear_exits_for_a_wrong_key_bad_filters_and_no_service(base: str, keys: Keys, tmp_path: Path) -> None:
    forbidden = runner.invoke(fada, ["audit", "--url", base, "--key", keys.qa.secret])
    assert forbidden.exit_code == 3 and "admin key" in forbidden.stderr
    unknown = runner.invoke(fada, ["audit", "--url", base, "--key", "fada_nope"])
    assert unknown.exit_code == 3 and "refused the API key" in unknown.stderr
    bad_time = runner.invoke(fada, ["audit", "--url", base, "--key", keys.admin.secret, "--from", "2026-03-01T08:00"])
    assert bad_time.exit_code == 2 and "no time zone" in bad_time.stderr
    no_such_key = runner.invoke(fada, ["audit", "--url", base, "--key", keys.admin.secret, "--by", "fada_nobody"])
    assert no_such_key.exit_code == 2 and "fada_nobody" in no_such_key.stderr
    nowhere = tmp_path / "missing" / "trail.csv"
    no_folder = runner.invoke(fada, ["audit", "--url", base, "--key", keys.admin.secret, "--out", str(nowhere)])
    assert no_folder.exit_code == 2 and not nowhere.exists()
    no_key = runner.invoke(fada, ["audit", "--url", base], env={"FADA_API_KEY": ""})
    assert no_key.exit_code == 2 and "no API key" in no_key.stderr


def test_a_service_that_is_not_there_is_exit_4_after_the_clients_retries() -> None:
    down = runner.invoke(fada, ["audit", "--url", f"http://127.0.0.1:{free_port()}", "--key", "fada_any",
                                "--timeout", "2"])
    assert down.exit_code == 4 and "cannot reach" in down.stderr
