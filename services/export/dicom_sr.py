"""A job's result as a DICOM Comprehensive 3D SR (TID 1500 measurement report, highdicom):
the view label, and every box, polygon and keypoint as a 2D image region on the source
instance, with the model as the algorithm identification.

The SR links to the study by the source's UIDs. Served by the API it carries no patient
identity: the service never stored any (de-identification at ingest). Pushed to a PACS, it
carries the patient and study attributes that PACS holds for the source
(``services.notify.pacs_context``), so that the PACS files it in that study.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from pydicom.valuerep import DA, DT, TM
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import Image, Job, Result
from shared.schemas.results import ResultDocument

SCHEME = "99FADA"  # private coding scheme for the profile's labels (PS3.16 8.2: 99 prefix)
FINDING = hd.sr.CodedConcept("fetal-structure", SCHEME, "Fetal anatomical structure")
STRUCTURE = hd.sr.CodedConcept("structure-label", SCHEME, "Structure label")
VIEW = hd.sr.CodedConcept("standard-view", SCHEME, "Standard view")
KEYPOINT = hd.sr.CodedConcept("landmark", SCHEME, "Anatomical landmark")
OBSTETRIC_US = hd.sr.CodedConcept("268445003", "SCT", "Ultrasound scan - obstetric")


@dataclass(frozen=True)
class SourceInstance:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None
    frame: int  # 0-based; a multi-frame source is referenced by its frame number
    frame_count: int | None = None  # None: not recorded (rows from before it was)

    @property
    def frame_numbers(self) -> list[int] | None:
        """Referenced Frame Number (1-based), required when the source is multi-frame and the
        reference is to one frame (PS3.3 Table 10-3); absent for a single-frame source."""
        multi_frame = (self.frame_count or 1) > 1 or self.frame > 0
        return [self.frame + 1] if multi_frame else None


class NotFromDicom(ValueError):
    """The job's image was not a DICOM instance with UIDs: an SR would reference nothing."""


def source_instance(session: Session, job_id: str) -> SourceInstance:
    """The DICOM instance a job was made from; ``NotFromDicom`` when there is none."""
    row = session.execute(select(Image).join(Job, Job.image_id == Image.id).where(Job.id == job_id)).scalar_one()
    if not (row.dicom_sop_instance_uid and row.dicom_sop_class_uid and row.dicom_study_instance_uid
            and row.dicom_series_instance_uid):
        raise NotFromDicom(f"job {job_id} was not made from a DICOM instance with UIDs ({row.format.value}): "
                           "a structured report would reference nothing")
    return SourceInstance(row.dicom_study_instance_uid, row.dicom_series_instance_uid, row.dicom_sop_instance_uid,
                          row.dicom_sop_class_uid, row.dicom_modality, row.frame, row.frame_count)


def content_time(session: Session, job_id: str) -> datetime:
    """When the job's result was made: its finish, or the first stage's result while a HITL job
    waits. The SR's content and creation times are this, not the time of the download, so
    every copy of one SOP Instance UID is the same object."""
    made = session.scalar(select(func.coalesce(Job.finished_at, Result.created_at))
                          .join(Result, Result.job_id == Job.id).where(Job.id == job_id))
    if made is None:
        raise ValueError(f"job {job_id} has no result")
    return made


def sr_bytes(sr: hd.sr.Comprehensive3DSR) -> bytes:
    buf = io.BytesIO()
    sr.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _label(code: str) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code[:16], SCHEME, code)


def _evidence(source: SourceInstance, context: Dataset | None) -> Dataset:
    """The source as highdicom needs it: its UIDs, and its patient and study attributes from
    ``context`` (the PACS's copy of the source, at push time), else empty."""
    ds = Dataset()
    for element in context or ():
        ds.add(element)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = source.study_instance_uid, source.series_instance_uid
    ds.SOPInstanceUID, ds.SOPClassUID = source.sop_instance_uid, source.sop_class_uid
    ds.Modality = source.modality or "US"
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate",
                    "StudyTime", "AccessionNumber", "ReferringPhysicianName"):
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def _closed(points: list[tuple[float, float]]) -> np.ndarray:
    return np.array([*points, points[0]], dtype=float)


def build_sr(document: ResultDocument, source: SourceInstance, *, job_id: str, made: datetime,
             context: Dataset | None = None) -> hd.sr.Comprehensive3DSR:
    """The SR of a job's result, made at ``made`` (``content_time``). ``context``: the source's
    patient and study attributes (the push to a PACS reads them from it); without it they are
    empty (the service has none)."""
    image = hd.sr.SourceImageForRegion(
        source.sop_class_uid, source.sop_instance_uid,
        referenced_frame_numbers=source.frame_numbers)
    algorithm = hd.sr.AlgorithmIdentification(
        name="FADA-SKD" + (" (untrained test model)" if document.model.untrained else ""),
        version=document.model.revision)

    def roi(n: int, label: str, graphic: str, data: np.ndarray) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[job_id, str(n)]),
                                                         identifier=f"{label} #{n}"),
            referenced_region=hd.sr.ImageRegion(graphic_type=graphic, graphic_data=data, source_image=image),
            finding_type=FINDING, algorithm_id=algorithm,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(STRUCTURE, _label(label))])

    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    for d in document.detections:
        x, y, w, h = d.bbox
        box = _closed([(x, y), (x + w, y), (x + w, y + h), (x, y + h)])
        groups.append(roi(len(groups) + 1, d.label, "POLYLINE", box))
    for s in document.segmentations:
        for ring in s.segmentation:
            pts = list(zip(ring[0::2], ring[1::2], strict=True))
            if len(pts) >= 3:
                groups.append(roi(len(groups) + 1, s.label, "POLYLINE", _closed(pts)))
    for k in document.keypoints:
        for i in range(0, len(k.keypoints) - 2, 3):
            x, y, visible = k.keypoints[i:i + 3]
            if visible > 0:
                groups.append(roi(len(groups) + 1, k.label, "POINT", np.array([[x, y]], dtype=float)))

    measurements: list[object] = list(groups)
    if document.classification is not None:
        measurements.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[job_id, "view"]),
                                                         identifier="view classification"),
            algorithm_id=algorithm,
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(VIEW, _label(document.classification.label))]))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["fada-serve", document.model.revision]), name="FADA Serve"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=OBSTETRIC_US, imaging_measurements=measurements)  # type: ignore[arg-type]
    sr = hd.sr.Comprehensive3DSR(
        evidence=[_evidence(source, context)], content=report,
        series_instance_uid=generate_uid(entropy_srcs=[job_id, "series"]), series_number=900,
        sop_instance_uid=generate_uid(entropy_srcs=[job_id, document.model.revision, "sr"]), instance_number=1,
        manufacturer="FADA Serve", is_complete=True)
    # highdicom stamps the host's local time of the call; one UID must mean one content
    made = made.astimezone(UTC)
    sr.ContentDate = sr.InstanceCreationDate = DA(made.date())
    sr.ContentTime = sr.InstanceCreationTime = TM(made.time())
    sr.TimezoneOffsetFromUTC = "+0000"
    for equipment in sr.get("ContributingEquipmentSequence", []):  # highdicom's own entry, stamped now
        equipment.ContributionDateTime = DT(made)
    return sr
