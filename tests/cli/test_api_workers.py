"""``fada api --workers N``: several gateway processes behind one port. A Prometheus scrape
is answered by one of them, and must still count every process's requests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.worker.processes import free_port

from .test_serve import _unconfigured, _wait, terminate

HEALTHZ = re.compile(r'^fada_http_requests_total\{method="GET",route="/healthz",status="200"\} (\S+)$', re.M)


def test_metrics_count_the_requests_of_every_gateway_process(tmp_path: Path) -> None:
    env = _unconfigured()
    subprocess.run([sys.executable, "-m", "cli.main", "migrate"], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    port, log = free_port(), tmp_path / "api.log"
    with log.open("wb") as out:
        api = subprocess.Popen([sys.executable, "-m", "cli.main", "api", "--port", str(port), "--workers", "2"],
                               cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def answering() -> bool:  # /readyz, not /healthz: only the requests below are counted
            try:
                return httpx.get(f"{base}/readyz", timeout=5).status_code in (200, 503)
            except httpx.TransportError:
                return False

        _wait(answering, 120, "the gateway", log)
        _wait(lambda: log.read_text(errors="replace").count("Application startup complete") == 2, 120,
              "both gateway processes", log)
        for _ in range(30):  # a new connection each: the kernel spreads them over the processes
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        for _ in range(6):
            scrape = httpx.get(f"{base}/metrics", timeout=10).text
            counted = HEALTHZ.search(scrape)
            assert counted and float(counted.group(1)) == 30, (counted and counted.group(0), scrape[:2000])
    finally:
        terminate(api)
