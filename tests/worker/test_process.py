"""process_job on a real pipeline (tiny model) and a real database: claim, lease, result,
idempotence under redelivery, HITL pause and resume, and failures."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.export.coco import to_coco
from services.jobs import resume_hitl
from services.jobs.process import BAD_IMAGE_CODE, BAD_RESUME_CODE, Outcome, process_job
from services.pipeline.runner import Pipeline
from shared.db.models import Image, Job, JobStatus, Result
from shared.schemas.results import ResultDocument

OWNER = "test-worker:1"


def _job(sm: sessionmaker[Session], job_id: str) -> Job:
    with sm() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def _results(sm: sessionmaker[Session], job_id: str) -> list[Result]:
    with sm() as s:
        rows = list(s.scalars(select(Result).where(Result.job_id == job_id)))
        for r in rows:
            s.expunge(r)
        return rows


def test_job_succeeds_with_one_result(sm: sessionmaker[Session], pipeline: Pipeline,
                                      submit: Callable[..., str]) -> None:
    job_id = submit(external_id="acc-1")
    run = process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30)
    assert run.outcome is Outcome.succeeded and run.attempts == 1
    job = _job(sm, job_id)
    assert job.status is JobStatus.succeeded and job.lease_owner is None and job.finished_at is not None
    [result] = _results(sm, job_id)
    doc = ResultDocument.model_validate(result.document)
    assert doc.job_id == job_id and doc.status == "succeeded" and doc.model.untrained is True
    assert doc.image.width == 40 and doc.image.height == 30 and doc.image.format == "png"
    assert (doc.image.frame, doc.image.frame_count) == (0, 1)
    assert {"interpret", "classify", "map"} <= set(doc.phases)
    assert job.model_revision == doc.model.revision == pipeline.provenance.revision


def test_the_result_and_its_coco_name_the_analysed_frame_of_a_cine(sm: sessionmaker[Session], pipeline: Pipeline,
                                                                  submit: Callable[..., str]) -> None:
    """Annotations of a multi-frame upload are on one of its frames: the result says which."""
    cine = Path(str(get_testdata_file("examples_ybr_color.dcm"))).read_bytes()  # US multi-frame, 30 frames
    job_id = submit(cine, frame=3)
    assert process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30).outcome is Outcome.succeeded
    [result] = _results(sm, job_id)
    doc = ResultDocument.model_validate(result.document)
    assert (doc.image.format, doc.image.frame, doc.image.frame_count) == ("dicom", 3, 30)
    [image] = to_coco(doc, pipeline.profile, image_id=job_id)["images"]
    assert (image["id"], image["frame_index"], image["frame_count"]) == (job_id, 3, 30)


def test_redelivered_message_changes_nothing(sm: sessionmaker[Session], pipeline: Pipeline,
                                             submit: Callable[..., str]) -> None:
    job_id = submit()
    assert process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30).outcome is Outcome.succeeded
    before = _job(sm, job_id)
    again = process_job(sm, pipeline, job_id, owner="another-worker:2", lease_seconds=30)
    assert again.outcome is Outcome.skipped
    after = _job(sm, job_id)
    assert (after.status, after.attempts, after.updated_at) == (before.status, before.attempts, before.updated_at)
    assert len(_results(sm, job_id)) == 1


def test_job_leased_by_a_live_worker_is_left_alone(sm: sessionmaker[Session], pipeline: Pipeline,
                                                   submit: Callable[..., str]) -> None:
    """A second delivery while the first worker still runs the job (its lease is live)."""
    job_id = submit()
    started, release = threading.Event(), threading.Event()
    original = pipeline.analyze

    def slow_analyze(*args: Any, **kwargs: Any) -> ResultDocument:
        started.set()
        release.wait(30)
        return original(*args, **kwargs)

    outcome: list[Outcome] = []
    pipeline.analyze = slow_analyze  # type: ignore[method-assign]
    try:
        first = threading.Thread(target=lambda: outcome.append(
            process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30).outcome))
        first.start()
        assert started.wait(30)
        assert process_job(sm, pipeline, job_id, owner="dup:2", lease_seconds=30).outcome is Outcome.skipped
        release.set()
        first.join(60)
    finally:
        pipeline.analyze = original  # type: ignore[method-assign]
    assert outcome == [Outcome.succeeded]
    assert len(_results(sm, job_id)) == 1 and _job(sm, job_id).attempts == 1


def test_lease_is_renewed_while_the_model_works(sm: sessionmaker[Session], pipeline: Pipeline,
                                                submit: Callable[..., str]) -> None:
    job_id = submit()
    seen: list[Any] = []
    original = pipeline.analyze

    def slow_analyze(*args: Any, **kwargs: Any) -> ResultDocument:
        for _ in range(3):
            time.sleep(1.1)  # a lease of 3 s is renewed every second
            seen.append(_job(sm, job_id).lease_expires_at)
        return original(*args, **kwargs)

    pipeline.analyze = slow_analyze  # type: ignore[method-assign]
    try:
        run = process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=3)
    finally:
        pipeline.analyze = original  # type: ignore[method-assign]
    assert run.outcome is Outcome.succeeded
    assert seen[0] < seen[1] < seen[2], f"the lease did not move forward: {seen}"


def test_hitl_pauses_then_resumes_with_the_reviewers_phases(sm: sessionmaker[Session], pipeline: Pipeline,
                                                          submit: Callable[..., str]) -> None:
    job_id = submit(mode="hitl")
    assert process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30).outcome is Outcome.awaiting_review
    job = _job(sm, job_id)
    assert job.status is JobStatus.awaiting_review and job.hitl_state is not None
    [first] = _results(sm, job_id)
    assert first.document["status"] == "awaiting_review" and first.document["interpretation"] is not None
    assert first.document["phases"]["detect"]["status"] == "skipped"

    # awaiting review is a resting state: a stray message does not run it again
    assert process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30).outcome is Outcome.skipped

    with sm.begin() as s:
        assert resume_hitl(s, job_id, {"next_phases": ["detect"], "group": None})
    assert process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30).outcome is Outcome.succeeded
    [final] = _results(sm, job_id)
    assert final.id == first.id  # one result per job, updated in place
    doc = final.document
    assert doc["status"] == "succeeded"
    assert doc["interpretation"] == first.document["interpretation"]  # kept, not recomputed
    assert doc["phases"]["interpret"] == first.document["phases"]["interpret"]
    assert doc["phases"]["detect"]["status"] != "skipped" or "no" in (doc["phases"]["detect"]["detail"] or "")
    assert doc["phases"]["segment"]["status"] == "skipped"


def test_the_reviewers_corrected_label_steers_map_of_the_resumed_job(sm: sessionmaker[Session], pipeline: Pipeline,
                                                                    submit: Callable[..., str]) -> None:
    """MAP of the second stage reads the HITL reviewer's corrections over the model's first
    stage: the corrected view label decides the classes (a specific label maps directly, P1),
    while ``classification`` keeps what the model said."""
    job_id = submit(mode="hitl")
    assert process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30).outcome is Outcome.awaiting_review
    model_label = _results(sm, job_id)[0].document["classification"]["label"]
    corrected = "BPD_PLANE" if model_label != "BPD_PLANE" else "Aorta"
    tables = pipeline.profile.map
    with sm.begin() as s:
        assert resume_hitl(s, job_id, {"next_phases": ["detect", "segment"], "group": None, "decision": "correct",
                                       "label": corrected})
    assert process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30).outcome is Outcome.succeeded
    doc = ResultDocument.model_validate(_results(sm, job_id)[0].document)
    assert doc.classification is not None and doc.classification.label == model_label
    assert doc.mapping is not None and doc.mapping.tier == "P1"
    assert doc.mapping.detect_classes == tables.classification_to_detect[corrected]
    assert doc.mapping.segment_classes == tables.classification_to_segment[corrected]
    assert "after the reviewer's corrections" in (doc.phases["map"].detail or "")
    assert doc.phases["segment"].status != "skipped"  # the corrected view has classes to segment


def test_a_first_stage_saved_without_its_frame_finishes_with_the_frame_of_its_image(
        sm: sessionmaker[Session], pipeline: Pipeline, submit: Callable[..., str]) -> None:
    """A HITL job paused by an older release (its saved first stage has no frame) and resumed
    by this one stores the frame it analysed, from the stored image."""
    cine = Path(str(get_testdata_file("examples_ybr_color.dcm"))).read_bytes()  # 30 frames
    job_id = submit(cine, frame=3, mode="hitl")
    assert process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30).outcome is Outcome.awaiting_review
    state = dict(_job(sm, job_id).hitl_state or {})
    state["image"] = {k: v for k, v in state["image"].items() if k not in ("frame", "frame_count")}
    with sm.begin() as s:
        s.execute(update(Job).where(Job.id == job_id).values(hitl_state=state))
        assert resume_hitl(s, job_id, {"next_phases": ["detect"], "group": "brain"})
    assert process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30).outcome is Outcome.succeeded
    stored = _results(sm, job_id)[0].document["image"]
    assert (stored["frame"], stored["frame_count"]) == (3, 30)


def test_bad_reviewer_choice_fails_the_job(sm: sessionmaker[Session], pipeline: Pipeline,
                                           submit: Callable[..., str]) -> None:
    job_id = submit(mode="hitl")
    process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30)
    with sm.begin() as s:
        resume_hitl(s, job_id, {"next_phases": ["detect"], "group": "no-such-group"})
    assert process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30).outcome is Outcome.failed
    job = _job(sm, job_id)
    assert job.status is JobStatus.failed and job.error_code == BAD_RESUME_CODE and "no-such-group" in (
        job.error_detail or "")


def test_unreadable_stored_image_fails_at_once(sm: sessionmaker[Session], pipeline: Pipeline,
                                               submit: Callable[..., str]) -> None:
    job_id = submit()
    with sm.begin() as s:
        image_id = s.get_one(Job, job_id).image_id
        s.execute(update(Image).where(Image.id == image_id).values(data=b"not a png"))
    run = process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30)
    assert run.outcome is Outcome.failed
    job = _job(sm, job_id)
    assert job.status is JobStatus.failed and job.error_code == BAD_IMAGE_CODE and job.attempts == 1


def test_transient_errors_are_retried_until_attempts_run_out(sm: sessionmaker[Session], pipeline: Pipeline,
                                                             submit: Callable[..., str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = submit(max_attempts=2)

    def boom(*_: Any, **__: Any) -> ResultDocument:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(pipeline, "analyze", boom)
    first = process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30)
    assert first.outcome is Outcome.requeued and _job(sm, job_id).status is JobStatus.queued
    second = process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30)
    assert second.outcome is Outcome.failed
    job = _job(sm, job_id)
    assert job.status is JobStatus.failed and job.attempts == 2 and job.error_code == "max_attempts"
    assert "CUDA out of memory" in (job.error_detail or "")
    with sm() as s:
        assert s.scalar(select(func.count()).select_from(Result)) == 0


def test_canceled_job_is_not_run(sm: sessionmaker[Session], pipeline: Pipeline, submit: Callable[..., str]) -> None:
    from services.jobs import cancel

    job_id = submit()
    with sm.begin() as s:
        cancel(s, job_id)
    assert process_job(sm, pipeline, job_id, owner=OWNER, lease_seconds=30).outcome is Outcome.skipped
    assert _job(sm, job_id).status is JobStatus.canceled and _results(sm, job_id) == []
