"""A real Orthanc PACS for tests (Debian packages ``orthanc`` and ``orthanc-dicomweb``),
started on loopback with its DICOMweb plugin; fails under CI, skips elsewhere, when missing."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures_db import peer_unavailable
from tests.worker.processes import free_port

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not Path(binary).exists() or not PLUGIN.exists():
        peer_unavailable("Orthanc with its DICOMweb plugin is not installed",
                         hint="apt-get install orthanc orthanc-dicomweb")
    port = free_port()
    config = {
        "Name": "FADA-TEST", "StorageDirectory": str(tmp_path / "storage"), "IndexDirectory": str(tmp_path / "index"),
        "HttpPort": port, "DicomPort": free_port(), "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    path = tmp_path / "orthanc.json"
    path.write_text(json.dumps(config))
    log = (tmp_path / "orthanc.log").open("wb")
    proc = subprocess.Popen([binary, str(path)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/system", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "orthanc.log").read_text()
        time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
