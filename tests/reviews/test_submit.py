"""Writing reviews in the service layer (PostgreSQL and SQLite): who may review what and
when, the HITL gate, review_state, amendments with history, and concurrent reviewers."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import cancel, claim, fail, list_jobs, release_for_retry, resume_hitl
from services.reviews import (
    NO_PHASES_DETAIL,
    Corrections,
    InvalidReview,
    ReviewConflict,
    ReviewExists,
    ReviewInput,
    ReviewNotFound,
    Submitted,
    amend_review,
    list_reviews,
    review_queue,
    submit_review,
)
from services.reviews import submit as submit_module
from shared.db.models import (
    Job,
    JobMode,
    JobStatus,
    Review,
    ReviewDecision,
    ReviewDimension,
    ReviewRevision,
    ReviewState,
)

from .conftest import Key, Keys
from .helpers import OWNER, PROFILE, Jobs, full_document

INTERP, ANNOT = ReviewDimension.interpretation, ReviewDimension.annotation
ACCEPT, CORRECT, REJECT = ReviewDecision.accept, ReviewDecision.correct, ReviewDecision.reject


def _submit(sm: sessionmaker[Session], job_id: str, key_id: str, dimension: ReviewDimension = INTERP,
            **content: Any) -> Submitted:
    data = ReviewInput(**{"score": 1, "decision": ACCEPT, **content})
    with sm.begin() as session:
        return submit_review(session, job_id=job_id, reviewer_key_id=key_id, dimension=dimension, data=data,
                             profile=PROFILE)


def _amend(sm: sessionmaker[Session], job_id: str, key_id: str, dimension: ReviewDimension = INTERP,
           **content: Any) -> Review:
    data = ReviewInput(**{"score": 1, "decision": ACCEPT, **content})
    with sm.begin() as session:
        review = amend_review(session, job_id=job_id, reviewer_key_id=key_id, dimension=dimension, data=data,
                              profile=PROFILE)
        _ = review.history  # load it before the session closes
        return review


def _reviews(sm: sessionmaker[Session]) -> int:
    with sm() as session:
        return int(session.scalar(select(func.count()).select_from(Review)) or 0)


def _review_ids(sm: sessionmaker[Session], job_id: str) -> list[str]:
    with sm() as session:
        return [r.review.id for r in list_reviews(session, job_id)]


def test_a_review_records_the_reviewer_the_jobs_mode_and_model(sm: sessionmaker[Session], jobs: Jobs,
                                                               keys: Keys) -> None:
    job_id = jobs.autonomous_succeeded()
    corrections = Corrections.model_validate({"label": "FL_PLANE", "interpretation": {"imaging_plane": "femur"}})
    review = _submit(sm, job_id, keys.reviewer.id, score=2, decision=CORRECT, comment="plane is off",
                     corrections=corrections).review
    assert (review.job_id, review.reviewer_key_id, review.dimension, review.score, review.decision) == (
        job_id, keys.reviewer.id, INTERP, 2, CORRECT)
    assert (review.job_mode, review.model_revision, review.revision, review.amended_at) == (
        JobMode.autonomous, "rev-auto-3", 1, None)
    assert review.corrections == {"label": "FL_PLANE", "interpretation": {"imaging_plane": "femur"},
                                  "annotations": None}
    assert review.next_phases is None and review.group_name is None
    # QA sampling: an autonomous job never waits; reviewed once both dimensions are
    assert jobs.job(job_id).review_state is ReviewState.not_required
    _submit(sm, job_id, keys.reviewer.id, ANNOT, score=0)
    assert jobs.job(job_id).review_state is ReviewState.reviewed
    assert jobs.job(job_id).status is JobStatus.succeeded


def test_a_job_can_be_reviewed_once_it_has_a_result(sm: sessionmaker[Session], jobs: Jobs, keys: Keys) -> None:
    queued = jobs.queued()
    canceled = jobs.awaiting()
    with sm.begin() as session:
        assert cancel(session, canceled)
    second_stage = jobs.awaiting()  # resumed: queued again, with the first stage's result
    with sm.begin() as session:
        assert resume_hitl(session, second_stage, {"next_phases": ["detect"], "group": None})
    for job_id, status in ((queued, "queued"), (canceled, "canceled"), (second_stage, "queued")):
        for dimension in ReviewDimension:
            with pytest.raises(ReviewConflict) as raised:
                _submit(sm, job_id, keys.reviewer.id, dimension)
            assert (raised.value.code, raised.value.extra) == ("not_reviewable", {"current_status": status})
    assert _reviews(sm) == 0


def test_annotations_are_reviewed_after_the_job_succeeded(sm: sessionmaker[Session], jobs: Jobs,
                                                          keys: Keys) -> None:
    job_id = jobs.awaiting()
    with pytest.raises(ReviewConflict) as raised:
        _submit(sm, job_id, keys.reviewer.id, ANNOT)
    assert raised.value.code == "annotations_not_ready" and "once it has succeeded" in raised.value.detail
    assert _reviews(sm) == 0 and jobs.job(job_id).status is JobStatus.awaiting_review


def test_one_review_per_reviewer_and_dimension(sm: sessionmaker[Session], jobs: Jobs, keys: Keys,
                                               second_reviewer: Key) -> None:
    job_id = jobs.autonomous_succeeded()
    first = _submit(sm, job_id, keys.reviewer.id, score=1).review
    with pytest.raises(ReviewExists) as raised:
        _submit(sm, job_id, keys.reviewer.id, score=3)
    assert raised.value.code == "review_exists"
    assert f"PUT /v1/jobs/{job_id}/reviews/interpretation" in raised.value.detail
    _submit(sm, job_id, keys.reviewer.id, ANNOT)  # another dimension
    _submit(sm, job_id, second_reviewer.id)  # another reviewer
    with sm() as session:
        records = list_reviews(session, job_id)
    assert [(r.review.reviewer_key_id, r.review.dimension) for r in records] == [
        (keys.reviewer.id, INTERP), (keys.reviewer.id, ANNOT), (second_reviewer.id, INTERP)]
    assert records[0].review.id == first.id and records[0].review.score == 1
    assert [r.reviewer_name for r in records] == ["reviewer", "reviewer", "second reviewer"]


def test_the_unique_constraint_settles_a_race_the_check_lost(sm: sessionmaker[Session], jobs: Jobs, keys: Keys,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = jobs.autonomous_succeeded()
    _submit(sm, job_id, keys.reviewer.id, score=1)
    # As if a concurrent request had inserted its review after this one looked.
    monkeypatch.setattr(submit_module, "_current", lambda *args: None)
    with pytest.raises(ReviewExists):
        _submit(sm, job_id, keys.reviewer.id, score=3)
    with sm() as session:
        assert [r.review.score for r in list_reviews(session, job_id)] == [1]


def test_the_gate_review_resumes_the_job_with_the_chosen_phases(sm: sessionmaker[Session], jobs: Jobs,
                                                                keys: Keys) -> None:
    job_id = jobs.awaiting()
    submitted = _submit(sm, job_id, keys.reviewer.id, score=1, decision=CORRECT, next_phases=["detect", "segment"],
                        group="brain")
    assert submitted.resumed
    job = jobs.job(job_id)
    assert (job.status, job.attempts, job.review_state) == (JobStatus.queued, 0, ReviewState.pending)
    assert job.hitl_choice == {"next_phases": ["detect", "segment"], "group": "brain",
                               "review_id": submitted.review.id, "decision": "correct"}
    assert (submitted.review.next_phases, submitted.review.group_name) == (["detect", "segment"], "brain")
    assert submitted.review.job_mode is JobMode.hitl and submitted.review.model_revision == "rev-hitl-1"
    # without a group, MAP decides from the interpretation on the worker
    other = jobs.awaiting()
    assert _submit(sm, other, keys.reviewer.id, next_phases=["detect"]).resumed
    assert jobs.job(other).hitl_choice == {"next_phases": ["detect"], "group": None,
                                           "review_id": _review_ids(sm, other)[0], "decision": "accept"}


@pytest.mark.parametrize(("decision", "next_phases", "detail"), [
    (REJECT, None, "rejected by the reviewer"),
    (REJECT, [], "rejected by the reviewer"),
    (ACCEPT, [], NO_PHASES_DETAIL),
])
def test_reject_or_no_phases_finishes_the_job_at_once(sm: sessionmaker[Session], jobs: Jobs, keys: Keys,
                                                      decision: ReviewDecision, next_phases: list[str] | None,
                                                      detail: str) -> None:
    job_id = jobs.awaiting()
    submitted = _submit(sm, job_id, keys.reviewer.id, score=3, decision=decision, next_phases=next_phases)
    assert not submitted.resumed and submitted.gate is not None
    job = jobs.job(job_id)
    # nothing to annotate, so no annotation review is needed: reviewed at once
    assert (job.status, job.review_state) == (JobStatus.succeeded, ReviewState.reviewed)
    assert job.hitl_choice == {"next_phases": [], "group": None, "review_id": submitted.review.id,
                               "decision": decision.value}
    doc = jobs.document(job_id)
    assert doc["status"] == "succeeded"
    assert {doc["phases"][p]["detail"] for p in ("map", "detect", "keypoints", "segment")} == {detail}
    assert submitted.review.decision is decision and submitted.review.next_phases == next_phases
    # there are no annotations to review: an annotation review would score nothing
    with pytest.raises(ReviewConflict, match="no annotations to review"):
        _submit(sm, job_id, keys.reviewer.id, ANNOT, score=0)
    assert jobs.job(job_id).review_state is ReviewState.reviewed


GATE_REFUSALS = [
    ({"decision": ACCEPT}, "must give next_phases"),
    ({"decision": CORRECT, "group": "brain"}, "must give next_phases"),
    ({"decision": REJECT, "next_phases": ["detect"]}, "decision reject finishes the job without later phases"),
    ({"decision": REJECT, "group": "brain"}, "decision reject finishes the job without later phases"),
    ({"next_phases": ["detect"], "group": "unicorn"}, "group 'unicorn' is not a routing group of profile fada-skd"),
    ({"next_phases": [], "group": "brain"}, "with next_phases [] leave it out"),
    ({"next_phases": ["detect", "detect"]}, "next_phases repeats ['detect']"),
    ({"next_phases": ["interpret"]}, "next_phases ['interpret'] are not later phases"),
    ({"next_phases": ["segment"], "group": "crl"}, "would run nothing for group 'crl': it is localised by detect"),
    ({"next_phases": ["detect"], "group": "crl_kp"}, "it is localised by keypoints"),
]


@pytest.mark.parametrize(("content", "detail"), GATE_REFUSALS)
def test_a_gate_review_that_does_not_choose_well_is_refused(sm: sessionmaker[Session], jobs: Jobs, keys: Keys,
                                                            content: dict[str, Any], detail: str) -> None:
    job_id = jobs.awaiting()
    with pytest.raises(InvalidReview) as raised:
        _submit(sm, job_id, keys.reviewer.id, **content)
    assert detail in raised.value.detail
    assert _reviews(sm) == 0
    job = jobs.job(job_id)
    assert (job.status, job.hitl_choice) == (JobStatus.awaiting_review, None)


def test_phases_and_group_mean_nothing_outside_the_gate(sm: sessionmaker[Session], jobs: Jobs, keys: Keys) -> None:
    autonomous, hitl_done = jobs.autonomous_succeeded(), jobs.hitl_succeeded()
    with pytest.raises(InvalidReview, match="HITL jobs only"):
        _submit(sm, autonomous, keys.reviewer.id, next_phases=["detect"])
    with pytest.raises(InvalidReview, match="belong to an interpretation review"):
        _submit(sm, hitl_done, keys.reviewer.id, ANNOT, group="brain")
    with pytest.raises(ReviewConflict) as raised:
        _submit(sm, hitl_done, keys.reviewer.id, next_phases=["detect"])
    assert raised.value.code == "phases_chosen_already" and raised.value.extra == {"current_status": "succeeded"}
    assert _reviews(sm) == 0


def test_a_hitl_job_is_pending_until_both_dimensions_are_reviewed(sm: sessionmaker[Session], jobs: Jobs,
                                                                  keys: Keys, second_reviewer: Key) -> None:
    job_id = jobs.awaiting()
    assert jobs.job(job_id).review_state is ReviewState.pending
    _submit(sm, job_id, keys.reviewer.id, next_phases=["detect"], group="brain")
    assert jobs.job(job_id).review_state is ReviewState.pending
    jobs.complete(job_id, full_document())  # the worker's second stage
    assert jobs.job(job_id).review_state is ReviewState.pending
    _submit(sm, job_id, second_reviewer.id, ANNOT, score=2, decision=CORRECT)
    job = jobs.job(job_id)
    assert (job.status, job.review_state) == (JobStatus.succeeded, ReviewState.reviewed)
    # a job resumed without a review (no interpretation review yet) is not reviewed by annotations alone
    other = jobs.hitl_succeeded()
    _submit(sm, other, keys.reviewer.id, ANNOT)
    assert jobs.job(other).review_state is ReviewState.pending
    _submit(sm, other, second_reviewer.id, INTERP)
    assert jobs.job(other).review_state is ReviewState.reviewed


def test_a_failed_hitl_job_waits_for_no_review(sm: sessionmaker[Session], jobs: Jobs, keys: Keys) -> None:
    """A failed job cannot be reviewed, so it must not stay ``pending``: that would count it in
    every ``review_state=pending`` list forever while no reviewer's queue shows it."""
    first_stage = jobs.queued(JobMode.hitl)  # fails before the gate: the model crashed
    with sm.begin() as session:
        assert claim(session, first_stage, owner=OWNER, lease_seconds=60) is not None
        assert fail(session, first_stage, OWNER, "model_error", "the model crashed")
    second_stage = jobs.awaiting()  # fails after the gate, on its last attempt
    _submit(sm, second_stage, keys.reviewer.id, next_phases=["detect"], group="brain")
    assert jobs.job(second_stage).review_state is ReviewState.pending
    with sm.begin() as session:
        session.execute(update(Job).where(Job.id == second_stage).values(max_attempts=1))
        assert claim(session, second_stage, owner=OWNER, lease_seconds=60) is not None
        assert release_for_retry(session, second_stage, OWNER, "worker lost") is JobStatus.failed
    for job_id in (first_stage, second_stage):
        job = jobs.job(job_id)
        assert (job.status, job.review_state) == (JobStatus.failed, ReviewState.not_required)
    # amending the gate review of the failed job does not bring the wait back
    _amend(sm, second_stage, keys.reviewer.id, score=2, decision=CORRECT, comment="plane was fine")
    assert jobs.job(second_stage).review_state is ReviewState.not_required
    with pytest.raises(ReviewConflict, match="is failed"):
        _submit(sm, second_stage, keys.reviewer.id, ANNOT)
    with sm() as session:
        assert list_jobs(session, review_state=ReviewState.pending).items == []
        assert review_queue(session, reviewer_key_id=keys.reviewer.id).items == []


def test_an_amendment_keeps_every_previous_version(sm: sessionmaker[Session], jobs: Jobs, keys: Keys,
                                                   second_reviewer: Key) -> None:
    job_id = jobs.autonomous_succeeded()
    original = _submit(sm, job_id, keys.reviewer.id, ANNOT, score=3, decision=REJECT, comment="boxes missing").review
    fix = Corrections.model_validate({"annotations": [{"label": "Brain", "bbox": [1, 1, 10, 10]}]})
    first = _amend(sm, job_id, keys.reviewer.id, ANNOT, score=2, decision=CORRECT, corrections=fix)
    second = _amend(sm, job_id, keys.reviewer.id, ANNOT, score=1, decision=ACCEPT, comment="fine after all")
    assert second.id == original.id and second.revision == 3
    assert (second.score, second.decision, second.comment, second.corrections) == (1, ACCEPT, "fine after all", None)
    assert first.amended_at is not None and second.amended_at is not None and second.amended_at >= first.amended_at
    assert second.created_at == original.created_at
    history = second.history
    assert [(v.revision, v.score, v.decision, v.comment) for v in history] == [
        (1, 3, REJECT, "boxes missing"), (2, 2, CORRECT, None)]
    assert history[1].corrections == fix.model_dump(mode="json")
    assert history[0].created_at == original.created_at and history[1].created_at == first.amended_at
    assert history[1].superseded_at == second.amended_at
    # someone else's review is not the caller's to amend
    with pytest.raises(ReviewNotFound):
        _amend(sm, job_id, second_reviewer.id, ANNOT)
    with pytest.raises(ReviewNotFound):
        _amend(sm, job_id, keys.reviewer.id, INTERP)
    # an invalid amendment changes nothing
    bad = Corrections.model_validate({"annotations": [{"label": "Brain", "bbox": [40, 1, 10, 10]}]})
    with pytest.raises(InvalidReview, match="not inside the 48x32 image"):
        _amend(sm, job_id, keys.reviewer.id, ANNOT, corrections=bad)
    with sm() as session:
        assert session.scalar(select(func.count()).select_from(ReviewRevision)) == 2
        assert [r.review.revision for r in list_reviews(session, job_id)] == [3]


def test_the_choice_a_gate_review_made_cannot_be_amended(sm: sessionmaker[Session], jobs: Jobs, keys: Keys) -> None:
    job_id = jobs.awaiting()
    _submit(sm, job_id, keys.reviewer.id, next_phases=["detect"], group="brain")
    with pytest.raises(InvalidReview, match="next_phases cannot be amended"):
        _amend(sm, job_id, keys.reviewer.id, next_phases=["segment"])
    with pytest.raises(InvalidReview, match="group cannot be amended"):
        _amend(sm, job_id, keys.reviewer.id, group="cardiac")
    with pytest.raises(ReviewConflict) as raised:
        _amend(sm, job_id, keys.reviewer.id, decision=REJECT)
    assert raised.value.code == "decision_fixed"
    amended = _amend(sm, job_id, keys.reviewer.id, score=2, decision=CORRECT, next_phases=["detect"], group="brain")
    assert (amended.revision, amended.next_phases, amended.group_name) == (2, ["detect"], "brain")
    amended = _amend(sm, job_id, keys.reviewer.id, score=2, decision=ACCEPT)  # left out: kept
    assert (amended.revision, amended.next_phases, amended.group_name) == (3, ["detect"], "brain")
    rejected = jobs.awaiting()
    _submit(sm, rejected, keys.reviewer.id, decision=REJECT, score=3)
    with pytest.raises(ReviewConflict, match="between accept and correct only"):
        _amend(sm, rejected, keys.reviewer.id, decision=CORRECT)
    assert _amend(sm, rejected, keys.reviewer.id, decision=REJECT, score=2).score == 2


def _in_thread(target: Any) -> tuple[threading.Thread, list[BaseException | Submitted]]:
    out: list[BaseException | Submitted] = []

    def run() -> None:
        try:
            out.append(target())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_concurrent_reviews_of_one_job_are_written_one_after_the_other(sm: sessionmaker[Session], jobs: Jobs,
                                                                       keys: Keys, second_reviewer: Key) -> None:
    """Two reviewers finish the two dimensions at the same moment: the second waits for the
    first (job row lock), sees its review, and the job ends ``reviewed`` (no write skew)."""
    job_id = jobs.hitl_succeeded()
    with sm.begin() as session:
        submit_review(session, job_id=job_id, reviewer_key_id=keys.reviewer.id, dimension=INTERP,
                      data=ReviewInput(score=1, decision=ACCEPT), profile=PROFILE)
        thread, out = _in_thread(lambda: _submit(sm, job_id, second_reviewer.id, ANNOT))
        time.sleep(0.3)
        assert not out, "the second review did not wait for the first transaction"
    thread.join(20)
    assert isinstance(out[0], Submitted), out
    assert jobs.job(job_id).review_state is ReviewState.reviewed


def test_only_one_of_two_concurrent_gate_reviews_chooses_the_phases(sm: sessionmaker[Session], jobs: Jobs,
                                                                    keys: Keys, second_reviewer: Key) -> None:
    job_id = jobs.awaiting()
    with sm.begin() as session:
        first = submit_review(session, job_id=job_id, reviewer_key_id=keys.reviewer.id, dimension=INTERP,
                              data=ReviewInput(score=1, decision=ACCEPT, next_phases=["detect"]), profile=PROFILE)
        thread, out = _in_thread(lambda: _submit(sm, job_id, second_reviewer.id, decision=REJECT, score=3))
        time.sleep(0.3)
        assert not out
    thread.join(20)
    assert isinstance(out[0], ReviewConflict), out
    job = jobs.job(job_id)
    assert job.status is JobStatus.queued and job.hitl_choice is not None
    assert job.hitl_choice["review_id"] == first.review.id
    assert _reviews(sm) == 1
