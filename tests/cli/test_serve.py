"""``fada serve`` as the README runs it: no configuration at all, in an empty folder. It must
create ./var (SQLite + serverless broker), build the tiny model, start a worker, and answer
the README's walk-through: key, submit a DICOM, poll, result."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from pydicom.data import get_testdata_file

from tests.worker.processes import free_port


def _wait(predicate, timeout: float, what: str, log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text(errors='replace')[-4000:]}")


def _unconfigured() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("FADA_")}


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as an operator stops it; its whole process group killed if it is not gone in 30 s."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def _start_serve(folder: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    """``fada serve`` with no configuration in ``folder`` (its own process group); its log."""
    log = folder / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port)], cwd=folder,
                                 env=_unconfigured(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return serve, log


def test_fada_serve_on_the_embedded_default(tmp_path: Path) -> None:
    env = _unconfigured()
    port = free_port()
    serve, log = _start_serve(tmp_path, port)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            def ready() -> bool:
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            _wait(ready, 120, "/readyz", log)
            assert (tmp_path / "var" / "fada.db").exists() and (tmp_path / "var" / "broker.db").exists()
            assert (tmp_path / "var" / "models" / "tiny" / "fada_model.json").exists()

            key = subprocess.run([sys.executable, "-m", "cli.main", "keys", "create", "--role", "submitter",
                                  "--name", "readme"], cwd=tmp_path, env=env, capture_output=True, text=True,
                                 check=True).stdout.strip()
            assert key.startswith("fada_") and "\n" not in key
            auth = {"Authorization": f"Bearer {key}"}
            dicom = Path(str(get_testdata_file("examples_palette.dcm"))).read_bytes()
            r = client.post("/v1/jobs", headers=auth, files={"file": ("us.dcm", dicom)})
            assert r.status_code == 202, r.text
            job_url = r.headers["Location"]
            _wait(lambda: client.get(job_url, headers=auth).json()["status"] in ("succeeded", "failed"), 120,
                  "the job to finish", log)
            job = client.get(job_url, headers=auth).json()
            assert job["status"] == "succeeded", job
            result = client.get(job["result_url"], headers=auth).json()
            assert result["image"]["format"] == "dicom" and result["model"]["untrained"] is True
    finally:
        terminate(serve)
    assert serve.returncode == 0, log.read_text(errors="replace")[-3000:]
    # the worker it started went with it
    leftover = subprocess.run(["pgrep", "-g", str(serve.pid)], capture_output=True, text=True).stdout.split()
    assert leftover == [], f"processes left behind: {leftover}"


def test_fada_serve_stops_when_its_worker_dies(tmp_path: Path) -> None:
    """A worker killed (the kernel's OOM killer, say) takes the gateway down with it, exit
    status 1, instead of leaving a gateway that accepts jobs nobody runs."""
    port = free_port()
    serve, log = _start_serve(tmp_path, port)
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        _wait(ready, 120, "/readyz", log)
        [worker] = subprocess.run(["pgrep", "-P", str(serve.pid)], capture_output=True, text=True).stdout.split()
        os.kill(int(worker), signal.SIGKILL)
        serve.wait(60)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert serve.returncode == 1, text[-3000:]
    assert "the worker process exited" in text
    _wait(lambda: not subprocess.run(["pgrep", "-g", str(serve.pid)], capture_output=True).stdout, 30,
          "the worker's pool processes to go", log)
