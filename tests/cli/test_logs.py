"""FADA_LOG_FORMAT and FADA_LOG_LEVEL on the real processes: ``fada serve`` in JSON (the
gateway, the worker and its pool process: every log record one JSON object, the request id on
a request's lines, no Celery banner), ``fada api`` in text (time, level, logger, process on
every line; before, its own warnings came bare through Python's last-resort handler)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from shared.settings import Settings
from tests.worker.processes import free_port

from .test_serve import _wait, terminate

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+ \[\d+\] ")
CELERY_DEFAULT_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d ")  # Celery's own format, had it kept the root logger


def _env(**fada: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("FADA_")}, **fada}


def _start(args: list[str], folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    log = folder / "process.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "cli.main", *args], cwd=folder, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return process, log


def _answers(client: httpx.Client, path: str) -> bool:
    try:
        return client.get(path).status_code == 200
    except httpx.TransportError:
        return False


def test_fada_serve_writes_every_log_record_as_json(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = _env(FADA_LOG_FORMAT="json", FADA_DATA_DIR=str(tmp_path / "var"), FADA_MODEL_DIR=str(tiny_model_dir))
    port = free_port()
    serve, log = _start(["serve", "--port", str(port)], tmp_path, env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            _wait(lambda: _answers(client, "/readyz"), 120, "/readyz", log)
            key = subprocess.run([sys.executable, "-m", "cli.main", "keys", "create", "--role", "submitter",
                                  "--name", "logs"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                 check=True).stdout.strip()
            auth = {"Authorization": f"Bearer {key}"}
            r = client.post("/v1/jobs", headers={**auth, "X-Request-ID": "trace-abc"},
                            files={"file": ("a.png", _png())})
            assert r.status_code == 202, r.text
            _wait(lambda: client.get(r.headers["Location"], headers=auth).json()["status"] == "succeeded", 120,
                  "the job to succeed", log)
    finally:
        terminate(serve)
    lines = log.read_text(errors="replace").splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert not [line for line in lines if TEXT_LINE.match(line) or CELERY_DEFAULT_LINE.match(line)], lines
    assert not any("[queues]" in line for line in lines)  # Celery's banner is not a log record
    assert all({"time", "level", "logger", "process", "message", "request_id"} <= set(r) for r in records)
    [access] = [r for r in records if r["logger"] == "uvicorn.access" and "POST /v1/jobs" in r["message"]]
    assert access["request_id"] == "trace-abc" and access["level"] == "INFO"
    loggers = {r["logger"] for r in records}
    assert {"uvicorn.error", "celery.apps.worker", "worker.runtime"} <= loggers, loggers
    assert len({r["process"] for r in records}) >= 3  # the gateway, the worker, its pool process


def test_fada_api_writes_text_lines_at_the_level_asked(tmp_path: Path) -> None:
    """A gateway whose database has no tables (never migrated): the 503's WARNING line, with
    time, level, logger and process, and the access line at INFO; at WARNING, no INFO line."""
    for level, expect_info in (("INFO", True), ("warning", False)):
        folder = tmp_path / level
        folder.mkdir()
        env = _env(FADA_DATA_DIR=str(folder), FADA_LOG_LEVEL=level,
                   FADA_DATABASE_URL=f"sqlite:///{folder}/empty.db")
        port = free_port()
        api, log = _start(["api", "--port", str(port)], folder, env)
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
                _wait(lambda c=client: _answers(c, "/healthz"), 60, "/healthz", log)
                r = client.get("/v1/jobs", headers={"Authorization": "Bearer fada_0123456789abcdef"})
                assert r.status_code == 503
        finally:
            terminate(api)
        lines = log.read_text(errors="replace").splitlines()
        assert lines and all(TEXT_LINE.match(line) for line in lines), lines
        warning = [line for line in lines if " WARNING api.middleware " in line]
        assert len(warning) == 1 and f"(request {r.headers['x-request-id']})" in warning[0]
        assert any(" INFO uvicorn.access " in line for line in lines) is expect_info


def test_the_log_settings_refuse_what_they_do_not_know() -> None:
    assert Settings(log_level="debug").log_level == "DEBUG"
    for bad in ({"log_level": "LOUD"}, {"log_format": "xml"}):
        with pytest.raises(ValidationError):
            Settings(**bad)  # type: ignore[arg-type]


def _png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (48, 32), (90, 90, 90)).save(out, format="PNG")
    return out.getvalue()
