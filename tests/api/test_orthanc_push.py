"""A real PACS pushes to the service: Orthanc (Debian packages ``orthanc`` and
``orthanc-dicomweb``), started by the test on loopback, is told to send a study to our
STOW-RS endpoint (it sends chunked multipart/related and needs a ReferencedSOPSequence back)."""

from __future__ import annotations

from pathlib import Path

import httpx
from pydicom.data import get_testdata_file
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Job

from .conftest import AppFactory, Keys, Serve


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
