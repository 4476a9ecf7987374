"""``GET /v1/jobs/{id}/sr.dcm``: the result as a Comprehensive 3D SR (TID 1500) that reads back
with pydicom and highdicom and references the instance the job was made from."""

from __future__ import annotations

import io

import highdicom as hd
import pydicom
from fastapi.testclient import TestClient
from pydicom.uid import Comprehensive3DSRStorage
from sqlalchemy.orm import Session, sessionmaker

from .conftest import Keys
from .helpers import assert_problem, file_part, png, succeed_job, ultrasound_dicom


def test_structured_report_reads_back_and_references_the_source(client: TestClient, keys: Keys,
                                                                 sm: sessionmaker[Session]) -> None:
    data = ultrasound_dicom()
    source = pydicom.dcmread(io.BytesIO(data))
    job_id = client.post("/v1/jobs", files=file_part(data), headers=keys.submitter.headers).json()["id"]
    assert_problem(client.get(f"/v1/jobs/{job_id}/sr.dcm", headers=keys.submitter.headers), 409, "result_not_ready")
    document = succeed_job(sm, job_id)

    r = client.get(f"/v1/jobs/{job_id}/sr.dcm", headers=keys.qa.headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    ds = pydicom.dcmread(io.BytesIO(r.content))
    assert ds.SOPClassUID == Comprehensive3DSRStorage and ds.Modality == "SR"
    assert ds.StudyInstanceUID == source.StudyInstanceUID  # filed with the study in the PACS
    assert ds.PatientName == "" and ds.PatientID == ""  # the service never stored any identity
    evidence = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID

    report = hd.sr.srread(io.BytesIO(r.content))
    assert isinstance(report, hd.sr.Comprehensive3DSR)
    groups = report.content.get_planar_roi_measurement_groups()
    # the fixture document: 2 boxes, 1 polygon, 1 keypoint item with 2 visible points
    assert len(groups) == len(document.detections) + len(document.segmentations) + 2
    labels = sorted(g.get_qualitative_evaluations()[0].value.meaning for g in groups)
    assert labels == sorted([d.label for d in document.detections] + [s.label for s in document.segmentations]
                            + [k.label for k in document.keypoints] * 2)
    for group in groups:
        region = group.roi
        assert region is not None
        referenced = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    first_box = groups[0].roi
    assert first_box.GraphicType == "POLYLINE" and len(first_box.GraphicData) == 10  # closed rectangle
    text = r.content.decode("latin-1")  # the algorithm identification (name, version) and the view label
    assert "FADA-SKD" in text and document.model.revision in text and "untrained" in text
    assert "head" in text  # the view label

    again = client.get(f"/v1/jobs/{job_id}/sr.dcm", headers=keys.qa.headers)
    assert pydicom.dcmread(io.BytesIO(again.content)).SOPInstanceUID == ds.SOPInstanceUID  # stable identity


def test_jobs_not_made_from_dicom_have_no_structured_report(client: TestClient, keys: Keys,
                                                            sm: sessionmaker[Session]) -> None:
    job_id = client.post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers).json()["id"]
    succeed_job(sm, job_id)
    assert_problem(client.get(f"/v1/jobs/{job_id}/sr.dcm", headers=keys.submitter.headers), 409, "not_dicom")
    assert_problem(client.get("/v1/jobs/nope/sr.dcm", headers=keys.submitter.headers), 404, "job_not_found")
