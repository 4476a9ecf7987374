"""A real PACS pushes to the service: Orthanc (Debian packages ``orthanc`` and
``orthanc-dicomweb``), started by the test on loopback, is told to send a study to our
STOW-RS endpoint (it sends chunked multipart/related and needs a ReferencedSOPSequence back)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Job
from tests.fixtures_db import peer_unavailable
from tests.worker.processes import free_port

from .conftest import AppFactory, Keys, Serve

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


def test_orthanc_pushes_a_study_and_each_instance_becomes_a_job(orthanc: str, make_app: AppFactory, serve: Serve,
                                                               keys: Keys, sm: sessionmaker[Session]) -> None:
    base = serve(make_app())
    dicom = Path(str(get_testdata_file("examples_palette.dcm"))).read_bytes()
    uploaded = httpx.post(f"{orthanc}/instances", content=dicom, headers={"Content-Type": "application/dicom"})
    assert uploaded.status_code == 200, uploaded.text
    study = uploaded.json()["ParentStudy"]
    server = {"Url": f"{base}/dicomweb/", "HttpHeaders": {"Authorization": keys.submitter.headers["Authorization"]}}
    assert httpx.put(f"{orthanc}/dicom-web/servers/ai", json=server).status_code == 200
    pushed = httpx.post(f"{orthanc}/dicom-web/servers/ai/stow", json={"Resources": [study], "Synchronous": True},
                        timeout=60)
    assert pushed.status_code == 200, pushed.text
    with sm() as session:
        jobs = list(session.scalars(select(Job)))
    sop = httpx.get(f"{orthanc}/instances/{uploaded.json()['ID']}/simplified-tags").json()["SOPInstanceUID"]
    assert [(j.external_id, j.status.value) for j in jobs] == [(sop, "queued")]
    # a second push (a PACS retrying) makes no second job
    again = httpx.post(f"{orthanc}/dicom-web/servers/ai/stow", json={"Resources": [study], "Synchronous": True},
                       timeout=60)
    assert again.status_code == 200, again.text
    with sm() as session:
        assert len(list(session.scalars(select(Job)))) == 1
