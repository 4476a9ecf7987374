"""Builders for the report tests: jobs with results and reviews, written with SQLAlchemy."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from services.keys import create_key
from shared.db.models import (
    Image,
    ImageFormat,
    Job,
    JobMode,
    JobStatus,
    Result,
    Review,
    ReviewDecision,
    ReviewDimension,
    ReviewRevision,
    ReviewState,
    Role,
)
from shared.db.types import new_id
from shared.schemas.results import Classification
from tests.jobs.helpers import make_document

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
# MODEL_FACTS.md, "Sonographer scoring": the human-in-the-loop row of the model card.
CARD_INTERPRETATION = {1: 36, 2: 12, 3: 1}  # -> 1.286 (73.5 % perfect)
CARD_ANNOTATION = {1: 31, 2: 14, 3: 4}  # -> 1.449 (63.3 % perfect); overall 1.368

INTERPRETATION, ANNOTATION = ReviewDimension.interpretation, ReviewDimension.annotation


def result_document(label: str | None, revision: str) -> dict[str, Any]:
    classification = Classification(label=label) if label is not None else None
    return make_document(revision=revision, classification=classification).model_dump(mode="json")


@dataclass
class Seeder:
    """Writes rows directly; each call is its own committed transaction."""

    sm: sessionmaker[Session]
    owner_key_id: str
    reviewers: dict[str, str] = field(default_factory=dict)  # name -> key id

    def reviewer(self, name: str) -> str:
        if name not in self.reviewers:
            with self.sm.begin() as session:
                self.reviewers[name] = create_key(session, name=name, role=Role.reviewer).key.id
        return self.reviewers[name]

    def jobs(self, count: int, *, mode: JobMode = JobMode.hitl, label: str | None = "BPD_PLANE",
             model: str | None = "rev-1", at: datetime = T0, with_result: bool = True) -> list[str]:
        ids: list[str] = []
        with self.sm.begin() as session:
            for i in range(count):
                image_id, job_id = new_id(), new_id()
                session.add(Image(id=image_id, sha256=hashlib.sha256(image_id.encode()).hexdigest(),
                                  format=ImageFormat.png, width=8, height=6, data=b"png", original_size_bytes=3,
                                  created_at=at))
                session.flush()
                session.add(Job(id=job_id, status=JobStatus.succeeded, mode=mode, image_id=image_id,
                                api_key_id=self.owner_key_id, created_at=at + timedelta(seconds=i),
                                model_revision=model,
                                review_state=ReviewState.reviewed if mode is JobMode.hitl else
                                ReviewState.not_required))
                session.flush()
                if with_result:
                    session.add(Result(job_id=job_id, document=result_document(label, model or "unknown"),
                                       model_base="tiny/base", model_adapter=None, model_revision=model or "unknown",
                                       profile="fada-skd", untrained=True, created_at=at))
                ids.append(job_id)
        return ids

    def reviews(self, job_ids: list[str], dimension: ReviewDimension, scores: list[int], *,
                reviewer: str = "sono-1", at: datetime = T0, step: timedelta = timedelta(0)) -> list[str]:
        """One review per job (scores[i] for job_ids[i]), by ``reviewer``, at ``at + i * step``;
        the review records the job's mode and model, as the review route does."""
        assert len(job_ids) == len(scores)
        key_id = self.reviewer(reviewer)
        ids: list[str] = []
        with self.sm.begin() as session:
            for i, (job_id, score) in enumerate(zip(job_ids, scores, strict=True)):
                job = session.get(Job, job_id)
                assert job is not None
                review_id = new_id()
                session.add(Review(id=review_id, job_id=job_id, reviewer_key_id=key_id, dimension=dimension,
                                   score=score, decision=ReviewDecision.accept if score in (0, 1) else
                                   ReviewDecision.correct, job_mode=job.mode, model_revision=job.model_revision,
                                   created_at=at + i * step))
                ids.append(review_id)
        return ids

    def amend(self, review_id: str, new_score: int, *, at: datetime) -> None:
        """What a PUT does: the old version into review_revisions, the current row updated."""
        with self.sm.begin() as session:
            review = session.get(Review, review_id)
            assert review is not None
            session.add(ReviewRevision(review_id=review.id, revision=review.revision, score=review.score,
                                       decision=review.decision, created_at=review.amended_at or review.created_at,
                                       superseded_at=at))
            review.score, review.revision, review.amended_at = new_score, review.revision + 1, at


def spread(counts: dict[int, int]) -> list[int]:
    """{score: how many} as a list of scores: {1: 2, 3: 1} -> [1, 1, 3]."""
    return [score for score, n in sorted(counts.items()) for _ in range(n)]


def group(body: dict[str, Any], key: str | None) -> dict[str, Any]:
    found = [g for g in body["groups"] if g["key"] == key]
    assert len(found) == 1, (key, [g["key"] for g in body["groups"]])
    return found[0]


def seed_model_card(seeder: Seeder) -> None:
    """49 HITL cases scored as the card's table, written the way the review route would write
    them; two reviews were amended, so their superseded versions must not count; autonomous
    reviews beside them must be left out by mode=hitl."""
    jobs = seeder.jobs(49, mode=JobMode.hitl)
    interpretation = spread(CARD_INTERPRETATION)
    annotation = spread(CARD_ANNOTATION)
    first_interpretation, first_annotation = list(interpretation), list(annotation)
    first_interpretation[0] = 3  # was "major errors", amended to 1
    first_annotation[-1] = 1  # was "acceptable", amended to 3
    i_ids = seeder.reviews(jobs, INTERPRETATION, first_interpretation, step=timedelta(minutes=1))
    a_ids = seeder.reviews(jobs, ANNOTATION, first_annotation, step=timedelta(minutes=1))
    seeder.amend(i_ids[0], interpretation[0], at=T0 + timedelta(days=1))
    seeder.amend(a_ids[-1], annotation[-1], at=T0 + timedelta(days=1))
    noise = seeder.jobs(5, mode=JobMode.autonomous, label="FL_PLANE", model="rev-2")
    seeder.reviews(noise, INTERPRETATION, [3] * 5)
    seeder.reviews(noise, ANNOTATION, [3] * 5)
