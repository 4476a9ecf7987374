"""De-identification at ingest: identifying values planted in every patient, staff,
institution, date and free-text attribute of a real ultrasound DICOM (and in PNG text chunks
and JPEG EXIF/comments) reach neither the database, nor the stored image, nor the logs, even
after a worker has run the job. What the service needs is kept: the UIDs, modality, device
model, pixel spacing, and the burned-in annotation flag (recorded on the job)."""

from __future__ import annotations

import io
import logging
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin
from pydicom.data import get_testdata_file
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.jobs.process import Outcome, process_job
from services.pipeline.runner import Pipeline
from shared.db.models import Base
from tests.worker.conftest import pipeline  # noqa: F401  (fixture: the tiny model's pipeline)

from .conftest import Keys
from .helpers import file_part

MARK = "ZQXPLANTED"
# Attributes that identify a patient, a person, a place or a time, or hold free text.
PLANTED: dict[str, str] = {
    "PatientName": f"{MARK}^NAME", "PatientID": f"{MARK}-PID", "PatientBirthDate": "19310417",
    "PatientAge": "093Y", "OtherPatientIDs": f"{MARK}-OPID", "PatientAddress": f"{MARK} ADDRESS",
    "PatientComments": f"{MARK} COMMENT", "ReferringPhysicianName": f"{MARK}^REFERRER",
    "PerformingPhysicianName": f"{MARK}^PERFORMER", "OperatorsName": f"{MARK}^OPERATOR",
    "NameOfPhysiciansReadingStudy": f"{MARK}^READER", "InstitutionName": f"{MARK} HOSPITAL",
    "InstitutionAddress": f"{MARK} STREET", "InstitutionalDepartmentName": f"{MARK} DEPT",
    "StationName": f"{MARK}STN", "AccessionNumber": f"{MARK}ACC", "StudyID": f"{MARK}SID",
    "StudyDate": "19310418", "SeriesDate": "19310419", "AcquisitionDate": "19310420", "ContentDate": "19310421",
    "StudyTime": "101112", "StudyDescription": f"{MARK} STUDY", "SeriesDescription": f"{MARK} SERIES",
    "ImageComments": f"{MARK} IMAGE", "DeviceSerialNumber": f"{MARK}SN", "RequestingPhysician": f"{MARK}^REQ",
}
SECRETS = [v for v in PLANTED.values() if MARK in v] + ["19310417", "19310418", "19310419", "19310420",
                                                       "19310421", "093Y"]


def _planted_dicom() -> tuple[bytes, pydicom.Dataset]:
    ds = pydicom.dcmread(str(get_testdata_file("examples_palette.dcm")))
    for keyword, value in PLANTED.items():
        setattr(ds, keyword, value)
    ds.ManufacturerModelName = "Voluson E10"
    ds.BurnedInAnnotation = "YES"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), ds


def _everything_stored(sm: sessionmaker[Session]) -> list[Any]:
    values: list[Any] = []
    with sm() as session:
        for table in Base.metadata.sorted_tables:
            for row in session.execute(select(table)):
                values.extend(row)
    return values


def _leaks(values: list[Any], text: str, secrets: list[str]) -> list[str]:
    found = []
    for secret in secrets:
        needle = secret.encode()
        for value in values:
            blob = value if isinstance(value, bytes) else str(value).encode()
            if needle in blob:
                found.append(f"{secret} in {str(value)[:80]!r}")
        if secret in text:
            found.append(f"{secret} in the logs")
    return found


def test_no_planted_identifier_is_stored_or_logged(client: TestClient, keys: Keys, sm: sessionmaker[Session],
                                                   pipeline: Pipeline, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    caplog.set_level(logging.DEBUG)
    data, ds = _planted_dicom()
    assert all(secret.encode() in data for secret in SECRETS)  # they are really in the upload

    png = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", f"{MARK} PNG TEXT")
    Image.new("RGB", (40, 30), (90, 90, 90)).save(png, "PNG", pnginfo=info)
    jpeg = io.BytesIO()
    exif = Image.Exif()
    exif[0x010E] = f"{MARK} EXIF DESCRIPTION"  # ImageDescription
    Image.new("RGB", (40, 30), (90, 90, 90)).save(jpeg, "JPEG", exif=exif.tobytes(), comment=f"{MARK} COM".encode())
    secrets = [*SECRETS, f"{MARK} PNG TEXT", f"{MARK} EXIF DESCRIPTION", f"{MARK} COM"]

    ids = {}
    for name, upload in (("dicom", data), ("png", png.getvalue()), ("jpeg", jpeg.getvalue())):
        r = client.post("/v1/jobs", files=file_part(upload), headers=keys.submitter.headers)
        assert r.status_code == 202, r.text
        ids[name] = r.json()["id"]
    for job_id in ids.values():
        assert process_job(sm, pipeline, job_id, owner="w:1", lease_seconds=30).outcome is Outcome.succeeded
        assert client.get(f"/v1/jobs/{job_id}/result", headers=keys.submitter.headers).status_code == 200

    stored = _everything_stored(sm)
    assert _leaks(stored, caplog.text, secrets) == []

    # what the service needs is kept
    job = client.get(f"/v1/jobs/{ids['dicom']}", headers=keys.submitter.headers).json()
    assert job["burned_in_annotation"] == "YES"
    assert ds.SOPInstanceUID in stored and ds.StudyInstanceUID in stored and "US" in stored
    assert "Voluson E10" in stored
    result = client.get(f"/v1/jobs/{ids['dicom']}/result", headers=keys.submitter.headers).json()
    assert result["image"]["pixel_spacing_mm"] is not None
    # the stored images carry no metadata chunks at all
    with sm() as session:
        from shared.db.models import Image as ImageRow

        for blob in session.scalars(select(ImageRow.data)):
            assert blob is not None
            with Image.open(io.BytesIO(blob)) as img:
                assert img.format == "PNG"
                assert not {k for k in img.info if k not in ("dpi",)}, img.info
