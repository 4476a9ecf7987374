"""Builders for the review tests: jobs in each state, with result documents shaped as the
pipeline writes them (fada-skd labels)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.ingest import decode_image
from services.jobs import claim, complete, get_job, get_result, resume_hitl, submit_job
from services.pipeline.profile import load_profile
from shared.db.models import Job, JobMode
from shared.schemas.results import (
    Classification,
    Detection,
    ImageInfo,
    ModelInfo,
    PhaseName,
    PhaseReport,
    ResultDocument,
)
from tests.api.helpers import png

OWNER = "review-test-worker:1:gpu"
PROFILE = load_profile("fada-skd")
WIDTH, HEIGHT = 48, 32
INTERPRETATION = {field: f"{field} as the model saw it" for field in PROFILE.interpretation_fields}
WAITING = "awaiting the reviewer's choice of phases (HITL)"
LATER: tuple[PhaseName, ...] = ("map", "detect", "keypoints", "segment")


def model_info(revision: str = "rev-hitl-1") -> ModelInfo:
    return ModelInfo(base="tiny/base", adapter=None, revision=revision, profile="fada-skd@1", untrained=True)


def first_stage_document(revision: str = "rev-hitl-1") -> ResultDocument:
    """What a HITL job holds while awaiting review: interpret + classify, the rest waiting."""
    return ResultDocument(
        status="awaiting_review", model=model_info(revision),
        image=ImageInfo(width=WIDTH, height=HEIGHT, sha256="b" * 64, format="png"),
        interpretation=dict(INTERPRETATION), classification=Classification(label="BPD_PLANE"),
        phases={"interpret": PhaseReport(status="ok", latency_ms=5.0), "classify": PhaseReport(status="ok"),
                **{p: PhaseReport(status="skipped", detail=WAITING) for p in LATER}},
    )


def full_document(revision: str = "rev-full-2") -> ResultDocument:
    doc = first_stage_document(revision)
    doc.status = "succeeded"
    doc.detections = [Detection(id=1, label="Brain", category_id=PROFILE.category_id("Brain"), bbox=(2, 3, 20, 10))]
    doc.phases.update({p: PhaseReport(status="ok") for p in ("map", "detect")})
    return doc


class Jobs:
    """Jobs of one submitter, moved through the state machine like a worker would."""

    def __init__(self, sm: sessionmaker[Session], *, submitter_id: str) -> None:
        self.sm, self.submitter_id = sm, submitter_id
        self._seed = 0

    def queued(self, mode: JobMode = JobMode.hitl, *, raw: bytes | None = None, notify_to: str | None = None) -> str:
        """A queued job of a small PNG (or ``raw``); ``notify_to``: its webhook URL."""
        self._seed += 1
        raw = raw if raw is not None else png(seed=self._seed, width=WIDTH, height=HEIGHT)
        with self.sm.begin() as session:
            job: Job = submit_job(session, decoded=decode_image(raw), original_size=len(raw),
                                  api_key_id=self.submitter_id, mode=mode, webhook_url=notify_to)
            return job.id

    def complete(self, job_id: str, document: ResultDocument, *, awaiting_review: bool = False) -> None:
        with self.sm.begin() as session:
            assert claim(session, job_id, owner=OWNER, lease_seconds=60) is not None
        with self.sm.begin() as session:
            assert complete(session, job_id, OWNER, document, awaiting_review=awaiting_review)

    def awaiting(self, document: ResultDocument | None = None, **queued: Any) -> str:
        """A HITL job after its first stage (``document``, else ``first_stage_document()``),
        waiting for the interpretation review; ``queued``: as for ``queued``."""
        job_id = self.queued(JobMode.hitl, **queued)
        self.complete(job_id, document or first_stage_document(), awaiting_review=True)
        return job_id

    def hitl_succeeded(self) -> str:
        """A HITL job resumed and finished by a worker (its gate is not a review of these tests)."""
        job_id = self.awaiting()
        with self.sm.begin() as session:
            assert resume_hitl(session, job_id, {"next_phases": ["detect"], "group": "brain"})
        self.complete(job_id, full_document())
        return job_id

    def autonomous_succeeded(self) -> str:
        job_id = self.queued(JobMode.autonomous)
        self.complete(job_id, full_document("rev-auto-3"))
        return job_id

    def job(self, job_id: str) -> Job:
        with self.sm() as session:
            job = get_job(session, job_id)
            assert job is not None
            session.expunge(job)
            return job

    def document(self, job_id: str) -> dict[str, Any]:
        with self.sm() as session:
            result = get_result(session, job_id)
            assert result is not None
            return dict(result.document)
