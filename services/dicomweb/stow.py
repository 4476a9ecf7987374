"""STOW-RS: store DICOM instances, each as a job (``external_id`` = SOP Instance UID) of the
instance's representative frame (a cine's Representative Frame Number, else its first), and
answer as DICOM PS3.18 says: 200 all stored, 202 some failed, 409 none stored, with a DICOM
JSON body naming what was stored (ReferencedSOPSequence) and what failed (FailedSOPSequence).

A repeated push of the same instance (a PACS retrying) answers with the job already made:
each instance is submitted under the Idempotency-Key ``stow:<SOP Instance UID>``. Unless that
job failed or was canceled: then the push is how the PACS (or a person resending the study)
retries, and it makes a new job; the old one stays, with its error, under the same external_id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.ingest import IngestError, part10_uids
from services.jobs import IdempotencyConflict, TooManyPending, forget_if_ended_without_result
from services.jobs.intake import Enqueue, JobOptions, Upload, accept_job

from .multipart_related import DICOM_TYPE, Part

log = logging.getLogger(__name__)

# Failure reasons (PS3.4 Annex GG, Storage Service Class status codes)
PROCESSING_FAILURE = 0x0110
CANNOT_UNDERSTAND = 0xC000
NOT_SUPPORTED = 0x0122  # the part is not application/dicom
DUPLICATE_CONFLICT = 0xA900  # same SOP Instance UID, different content
OUT_OF_RESOURCES = 0xA700  # the key's pending-job limit (FADA_MAX_PENDING_PER_KEY): send it again later


@dataclass
class StowOutcome:
    stored: list[tuple[str, str, str]] = field(default_factory=list)  # (class UID, instance UID, job id)
    failed: list[tuple[str | None, str | None, int, str]] = field(default_factory=list)  # (..., reason, why)
    created: int = 0  # stored instances that made a new job (the others were replays of a push)

    @property
    def status(self) -> int:
        if not self.failed:
            return 200
        if self.stored:
            return 202
        # nothing stored only because the key is at its limit: the standard's "busy", worth a retry
        return 503 if self.busy else 409

    @property
    def busy(self) -> bool:
        return bool(self.failed) and all(reason == OUT_OF_RESOURCES for *_, reason, _ in self.failed)


def store_instances(
    sm: sessionmaker[Session],
    parts: list[Part],
    options: JobOptions,
    *,
    api_key_id: str,
    enqueue: Enqueue,
    max_pixels: int,
    max_attempts: int,
    max_pending: int | None = None,
) -> StowOutcome:
    """One job per DICOM part; a bad part fails alone (the others are still stored), and so
    does a part past the key's pending-job limit."""
    outcome = StowOutcome()
    for part in parts:
        sop_class, sop_instance = part10_uids(bytes(part.data))
        if part.content_type not in ("", DICOM_TYPE):
            outcome.failed.append((sop_class, sop_instance, NOT_SUPPORTED, f"part type {part.content_type}"))
            continue
        if sop_instance is None:
            outcome.failed.append((sop_class, None, CANNOT_UNDERSTAND,
                                   "not a DICOM Part-10 instance with a valid SOP Instance UID in its File Meta"))
            continue
        key = f"stow:{sop_instance}"
        try:
            with sm.begin() as session:
                forget_if_ended_without_result(session, api_key_id, key)
            accepted = accept_job(
                sm, Upload(bytes(part.data), f"{sop_instance}.dcm"),
                replace(options, external_id=sop_instance[:128], frame=None),
                api_key_id=api_key_id, enqueue=enqueue, max_pixels=max_pixels, max_attempts=max_attempts,
                idempotency_key=key, max_pending=max_pending)
        except IngestError as exc:
            outcome.failed.append((sop_class, sop_instance, CANNOT_UNDERSTAND, f"{exc.code}: {exc.detail}"))
            continue
        except TooManyPending as exc:
            outcome.failed.append((sop_class, sop_instance, OUT_OF_RESOURCES, str(exc)))
            continue
        except IdempotencyConflict:
            outcome.failed.append((sop_class, sop_instance, DUPLICATE_CONFLICT,
                                   "this SOP Instance UID was stored before with different content"))
            continue
        except Exception as exc:  # one part's surprise must not turn the others' stored jobs into a 500
            log.exception("STOW-RS part %s failed", sop_instance)
            outcome.failed.append((sop_class, sop_instance, PROCESSING_FAILURE,
                                   f"processing failed: {type(exc).__name__}"))
            continue
        outcome.stored.append((sop_class or "", sop_instance, accepted.id))
        outcome.created += accepted.created
    return outcome


def _ui(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def to_dicom_json(outcome: StowOutcome, base_url: str) -> dict[str, Any]:
    """The STOW-RS response dataset in the DICOM JSON model (PS3.18 F.2)."""
    body: dict[str, Any] = {}
    if outcome.stored:
        body["00081199"] = {"vr": "SQ", "Value": [
            {"00081150": _ui(cls), "00081155": _ui(inst),
             "00081190": {"vr": "UR", "Value": [f"{base_url}/v1/jobs/{job_id}"]}}
            for cls, inst, job_id in outcome.stored]}
    if outcome.failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {"00081150": _ui(cls), "00081155": _ui(inst), "00081197": {"vr": "US", "Value": [reason]},
             # Warning/failure detail is not a standard attribute of the item; kept in a comment
             # attribute a person can read (TextValue, LT).
             "0040A160": {"vr": "UT", "Value": [why[:1024]]}}
            for cls, inst, reason, why in outcome.failed]}
    return body
