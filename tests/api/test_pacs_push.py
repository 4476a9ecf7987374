"""Results back in the PACS: with ``pacs_stow_url`` set, a DICOM job's result is stored to a
real Orthanc by STOW-RS as a Comprehensive 3D SR in the source's study, once."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import httpx
import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.notify import dispatch_once
from shared.db.models import Delivery, DeliveryKind, DeliveryStatus

from .conftest import ClientFactory, Keys, make_settings
from .helpers import file_part, png, succeed_job, ultrasound_dicom

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _orthanc_files(orthanc: str) -> list[bytes]:
    return [httpx.get(f"{orthanc}/instances/{i}/file").content for i in httpx.get(f"{orthanc}/instances").json()]


def test_a_dicom_job_s_result_is_stored_in_the_pacs_as_an_sr(orthanc: str, make_client: ClientFactory, keys: Keys,
                                                            sm: sessionmaker[Session], db_url: str, tmp_path: Path,
                                                            broker_url: str) -> None:
    overrides = {"pacs_stow_url": f"{orthanc}/dicom-web/studies"}
    client = make_client(**overrides)
    source = pydicom.dcmread(io.BytesIO(ultrasound_dicom()))
    dicom_job = client.post("/v1/jobs", files=file_part(ultrasound_dicom(), "us.dcm"), headers=keys.submitter.headers)
    png_job = client.post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers)
    assert dicom_job.status_code == png_job.status_code == 202
    for r in (dicom_job, png_job):
        succeed_job(sm, r.json()["id"])
    settings = make_settings(db_url, tmp_path, broker_url, **overrides)
    report = dispatch_once(sm, settings, owner="d")
    assert report.created == 1 and len(report.delivered) == 1, report  # the PNG has nothing to reference

    [stored] = _orthanc_files(orthanc)
    sr = hd.sr.srread(io.BytesIO(stored))  # highdicom reads it back as an SR document
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR and sr.Modality == "SR"
    assert sr.StudyInstanceUID == source.StudyInstanceUID  # filed in the source's study
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert any(item.ValueType == "CONTAINER" for item in sr.ContentSequence)  # the imaging measurements
    # the same SR the API serves for the job
    served = client.get(f"/v1/jobs/{dicom_job.json()['id']}/sr.dcm", headers=keys.submitter.headers)
    assert pydicom.dcmread(io.BytesIO(served.content)).SOPInstanceUID == sr.SOPInstanceUID

    # sent once: later dispatches store nothing more
    dispatch_once(sm, settings, owner="d")
    assert len(_orthanc_files(orthanc)) == 1
    log = client.get(f"/v1/jobs/{dicom_job.json()['id']}/deliveries", headers=keys.submitter.headers).json()
    assert [(d["kind"], d["status"], d["url"], d["tries"][0]["status_code"]) for d in log] == [
        ("pacs_sr", "delivered", None, 200)]


def test_an_unreachable_pacs_is_retried_then_failed(make_client: ClientFactory, keys: Keys, sm: sessionmaker[Session],
                                                   db_url: str, tmp_path: Path, broker_url: str) -> None:
    overrides = {"pacs_stow_url": "http://127.0.0.1:9/dicom-web/studies", "notify_max_attempts": 2,
                 "notify_retry_base_seconds": 0.01}
    client = make_client(**overrides)
    job = client.post("/v1/jobs", files=file_part(ultrasound_dicom(), "us.dcm"), headers=keys.submitter.headers)
    succeed_job(sm, job.json()["id"])
    settings = make_settings(db_url, tmp_path, broker_url, **overrides)
    for _ in range(100):
        dispatch_once(sm, settings, owner="d")
        with sm() as session:
            status = session.scalar(select(Delivery.status).where(Delivery.kind == DeliveryKind.pacs_sr))
        if status is DeliveryStatus.failed:
            break
    log = client.get(f"/v1/jobs/{job.json()['id']}/deliveries", headers=keys.submitter.headers).json()
    assert log[0]["status"] == "failed" and [t["attempt"] for t in log[0]["tries"]] == [1, 2]
    assert "ConnectError" in log[0]["last_error"]
