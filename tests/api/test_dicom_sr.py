"""``GET /v1/jobs/{id}/sr.dcm``: the result as a Comprehensive 3D SR (TID 1500) that reads back
with pydicom and highdicom and references the instance the job was made from."""

from __future__ import annotations

import io
import time
from datetime import UTC
from pathlib import Path
from typing import cast

import highdicom as hd
import pydicom
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.uid import Comprehensive3DSRStorage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.db.models import Job

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
    assert isinstance(report.content, hd.sr.MeasurementReport)  # a TID 1500 document
    groups = report.content.get_planar_roi_measurement_groups()
    # the fixture document: 2 boxes, 1 polygon, 1 keypoint item with 2 visible points
    assert len(groups) == len(document.detections) + len(document.segmentations) + 2
    # highdicom annotates QualitativeEvaluation.value as int | float; it is the coded concept
    labels = sorted(cast(hd.sr.CodedConcept, g.get_qualitative_evaluations()[0].value).meaning for g in groups)
    assert labels == sorted([d.label for d in document.detections] + [s.label for s in document.segmentations]
                            + [k.label for k in document.keypoints] * 2)
    for group in groups:
        region = group.roi
        assert region is not None
        referenced = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert "ReferencedFrameNumber" not in referenced  # a single-frame source: no frame to name
    first_box = groups[0].roi
    assert first_box is not None
    assert first_box.GraphicType == "POLYLINE" and len(first_box.GraphicData) == 10  # closed rectangle
    text = r.content.decode("latin-1")  # the algorithm identification (name, version) and the view label
    assert "FADA-SKD" in text and document.model.revision in text and "untrained" in text
    assert "head" in text  # the view label

    time.sleep(1.1)  # a download a second later is still the same object, byte for byte
    again = client.get(f"/v1/jobs/{job_id}/sr.dcm", headers=keys.qa.headers)
    assert again.content == r.content
    with sm() as session:
        finished = session.scalar(select(Job.finished_at).where(Job.id == job_id))
    assert finished is not None  # the content and creation times are the job's finish, in UTC
    stamp = (finished.astimezone(UTC).strftime("%Y%m%d"), finished.astimezone(UTC).strftime("%H%M%S"))
    assert (ds.ContentDate, ds.ContentTime[:6]) == stamp == (ds.InstanceCreationDate, ds.InstanceCreationTime[:6])
    assert ds.TimezoneOffsetFromUTC == "+0000"


def test_jobs_not_made_from_dicom_have_no_structured_report(client: TestClient, keys: Keys,
                                                            sm: sessionmaker[Session]) -> None:
    job_id = client.post("/v1/jobs", files=file_part(png()), headers=keys.submitter.headers).json()["id"]
    succeed_job(sm, job_id)
    assert_problem(client.get(f"/v1/jobs/{job_id}/sr.dcm", headers=keys.submitter.headers), 409, "not_dicom")
    assert_problem(client.get("/v1/jobs/nope/sr.dcm", headers=keys.submitter.headers), 404, "job_not_found")


def test_an_sr_of_a_cine_names_the_frame_it_annotates_frame_1_included(client: TestClient, keys: Keys,
                                                                       sm: sessionmaker[Session]) -> None:
    """A multi-frame source needs Referenced Frame Number (PS3.3 Table 10-3), or the regions
    annotate every frame; the first frame is number 1, not "no number"."""
    cine = Path(str(get_testdata_file("examples_ybr_color.dcm"))).read_bytes()  # US multi-frame, 30 frames
    for frame in (0, 3):
        r = client.post("/v1/jobs", files=file_part(cine, "cine.dcm"), data={"frame": str(frame)},
                        headers=keys.submitter.headers)
        assert r.status_code == 202, r.text
        succeed_job(sm, r.json()["id"])
        sr = client.get(f"/v1/jobs/{r.json()['id']}/sr.dcm", headers=keys.submitter.headers)
        content = hd.sr.srread(io.BytesIO(sr.content)).content
        assert isinstance(content, hd.sr.MeasurementReport)  # a TID 1500 document
        groups = content.get_planar_roi_measurement_groups()
        assert groups
        for group in groups:
            referenced = group.roi.ContentSequence[0].ReferencedSOPSequence[0]  # type: ignore[union-attr]
            assert referenced.ReferencedFrameNumber == frame + 1
