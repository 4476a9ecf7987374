"""Results back in the PACS: with ``pacs_stow_url`` set, a DICOM job's result is stored to a
real Orthanc by STOW-RS as a Comprehensive 3D SR in the source's study, once, carrying the
patient and study attributes the PACS holds for the source (so the study stays one study of
one patient); while the PACS lacks the source, the SR waits."""

from __future__ import annotations

import io
import time
from pathlib import Path

import highdicom as hd
import httpx
import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.export.dicom_sr import SourceInstance, build_sr
from services.notify import dispatch_once
from services.notify.pacs_context import source_context
from shared.db.models import Delivery, DeliveryKind, DeliveryStatus
from shared.db.types import utcnow

from .conftest import ClientFactory, Keys, make_settings
from .helpers import file_part, make_document, png, succeed_job, ultrasound_dicom

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _orthanc_files(orthanc: str, *, modality: str = "SR") -> list[bytes]:
    files = [httpx.get(f"{orthanc}/instances/{i}/file").content for i in httpx.get(f"{orthanc}/instances").json()]
    return [f for f in files if pydicom.dcmread(io.BytesIO(f), stop_before_pixels=True).Modality == modality]


def _store_source(orthanc: str) -> None:
    r = httpx.post(f"{orthanc}/instances", content=ultrasound_dicom(), headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200, r.text


def test_a_dicom_job_s_result_is_stored_in_the_pacs_as_an_sr(orthanc: str, make_client: ClientFactory, keys: Keys,
                                                            sm: sessionmaker[Session], db_url: str, tmp_path: Path,
                                                            broker_url: str) -> None:
    overrides = {"pacs_stow_url": f"{orthanc}/dicom-web/studies"}
    client = make_client(**overrides)
    source = pydicom.dcmread(io.BytesIO(ultrasound_dicom()))
    _store_source(orthanc)  # the PACS holds the source, as when it is the one that sent it to us
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
    # ... of the source's patient, as the PACS holds it: one study, one patient, two instances
    assert (sr.PatientID, str(sr.PatientName), sr.StudyDate) == (source.PatientID, str(source.PatientName),
                                                                 source.StudyDate)
    assert len(httpx.get(f"{orthanc}/studies").json()) == 1 and len(httpx.get(f"{orthanc}/patients").json()) == 1
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert any(item.ValueType == "CONTAINER" for item in sr.ContentSequence)  # the imaging measurements
    # the same SR the API serves for the job, which carries no identity (the service has none)
    served = pydicom.dcmread(io.BytesIO(client.get(f"/v1/jobs/{dicom_job.json()['id']}/sr.dcm",
                                                   headers=keys.submitter.headers).content))
    assert served.SOPInstanceUID == sr.SOPInstanceUID and served.PatientID == ""

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


def test_an_sr_waits_while_the_pacs_lacks_its_source(orthanc: str, make_client: ClientFactory, keys: Keys,
                                                     sm: sessionmaker[Session], db_url: str, tmp_path: Path,
                                                     broker_url: str) -> None:
    """An image sent to the service before (or instead of) the PACS: storing the SR then would
    file a patient-less second copy of the study. The try fails saying so and is retried; once
    the PACS holds the source, the SR goes in with its patient."""
    overrides = {"pacs_stow_url": f"{orthanc}/dicom-web/studies", "notify_retry_base_seconds": 0.05}
    client = make_client(**overrides)
    job = client.post("/v1/jobs", files=file_part(ultrasound_dicom(), "us.dcm"), headers=keys.submitter.headers)
    succeed_job(sm, job.json()["id"])
    settings = make_settings(db_url, tmp_path, broker_url, **overrides)
    report = dispatch_once(sm, settings, owner="d")
    assert report.retrying and not report.delivered, report
    assert httpx.get(f"{orthanc}/instances").json() == []  # nothing filed
    [delivery] = client.get(f"/v1/jobs/{job.json()['id']}/deliveries", headers=keys.submitter.headers).json()
    why = delivery["tries"][0]["error"]
    assert "the PACS has no instance" in why and "patient-less" in why
    _store_source(orthanc)
    for _ in range(100):
        if dispatch_once(sm, settings, owner="d").delivered:
            break
        time.sleep(0.05)
    [stored] = _orthanc_files(orthanc)
    source = pydicom.dcmread(io.BytesIO(ultrasound_dicom()))
    assert pydicom.dcmread(io.BytesIO(stored)).PatientID == source.PatientID
    assert len(httpx.get(f"{orthanc}/studies").json()) == 1


def test_values_an_sr_may_not_carry_are_left_out_of_the_pacs_context() -> None:
    """What a PACS answers is not ours to trust: a PatientSex of "U" or a date written with
    dashes (highdicom refuses both) and a malformed element are left out, so the SR can still
    be built; the rest is kept. (The PACS here answers from a script: only what it says matters.)"""
    source = SourceInstance("1.2.3", "1.2.3.4", "1.2.3.4.5", "1.2.840.10008.5.1.4.1.1.6.1", "US", 0)
    metadata = [{"00100020": {"vr": "LO", "Value": ["PID-7"]},
                 "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
                 "00100040": {"vr": "CS", "Value": ["U"]}, "00080020": {"vr": "DA", "Value": ["1990-01-01"]},
                 "00080030": {"vr": "TM", "Value": ["101500"]}, "00080050": {"vr": "SH", "Value": "not-a-list"},
                 "7FE00010": {"vr": "OB", "BulkDataURI": "http://pacs/bulk"}}]
    seen: list[str] = []

    def pacs(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json=metadata)

    with httpx.Client(transport=httpx.MockTransport(pacs)) as client:
        context = source_context(client, "http://pacs/dicom-web/studies?apikey=k", source, None)
    # the same DICOMweb service, its query (an API key, for some PACS) kept
    assert seen == ["http://pacs/dicom-web/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/metadata?apikey=k"]
    assert (context.PatientID, str(context.PatientName), context.StudyTime) == ("PID-7", "Doe^Jane", "101500")
    assert "PatientSex" not in context and "StudyDate" not in context and "AccessionNumber" not in context
    assert "PixelData" not in context
    sr = build_sr(make_document(), source, job_id="job-1", made=utcnow(), context=context)  # builds: nothing refused
    assert sr.PatientID == "PID-7"
