"""Submitting: image + job rows, batches, Idempotency-Key."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image as PILImage
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import DecodedImage, decode_image
from services.jobs import (
    IdempotencyConflict,
    batch_counts,
    cancel,
    create_batch,
    find_idempotent,
    fingerprint,
    get_job,
    intake,
    remember_idempotent,
    submit_job,
)
from shared.db.models import Batch, IdempotencyKey, Image, Job, JobMode, JobStatus, ReviewState

from .helpers import png_bytes


def test_submit_stores_image_and_queued_job(sm: sessionmaker[Session], submit: Callable[..., str]) -> None:
    job_id = submit(mode="hitl", external_id="ACC-1")
    with sm() as s:
        job = get_job(s, job_id)
        assert job is not None
        assert job.status is JobStatus.queued and job.mode is JobMode.hitl
        assert job.review_state is ReviewState.pending
        assert job.external_id == "ACC-1" and job.attempts == 0 and job.max_attempts == 3
        image = s.get(Image, job.image_id)
        assert image is not None
        assert (image.width, image.height, image.format, image.original_size_bytes) == (8, 6, "png", 123)
        assert len(image.sha256) == 64 and image.data is not None
        png = PILImage.open(io.BytesIO(image.data))
        assert png.format == "PNG" and png.size == (8, 6)
    auto_id = submit()
    with sm() as s:
        auto = get_job(s, auto_id)
        assert auto is not None and auto.review_state is ReviewState.not_required


def test_submit_is_in_the_callers_transaction(
    sm: sessionmaker[Session], api_key_id: str, decoded: DecodedImage
) -> None:
    with sm() as s:
        submit_job(s, decoded=decoded, original_size=1, api_key_id=api_key_id, mode="autonomous")
        s.rollback()
    with sm() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0
        assert s.scalar(select(func.count()).select_from(Image)) == 0


def test_batch_and_counts(sm: sessionmaker[Session], api_key_id: str, decoded: DecodedImage) -> None:
    with sm.begin() as s:
        batch = create_batch(s, api_key_id=api_key_id, external_id="B-1")
        ids = [
            submit_job(s, decoded=decoded, original_size=1, api_key_id=api_key_id, batch_id=batch.id).id
            for _ in range(3)
        ]
        batch_id = batch.id
    with sm.begin() as s:
        assert cancel(s, ids[0])
    with sm() as s:
        counts = batch_counts(s, batch_id)
        assert counts["queued"] == 2 and counts["canceled"] == 1 and counts["succeeded"] == 0
        assert set(counts) == {st.value for st in JobStatus}


def test_fingerprint_depends_on_content_and_fields() -> None:
    a = fingerprint(b"abc", {"mode": "hitl", "external_id": None})
    assert a == fingerprint(b"abc", {"external_id": None, "mode": "hitl"})
    assert a != fingerprint(b"abd", {"mode": "hitl", "external_id": None})
    assert a != fingerprint(b"abc", {"mode": "autonomous", "external_id": None})
    assert len(a) == 64


def test_idempotency_same_and_different_fingerprint(
    sm: sessionmaker[Session], api_key_id: str, decoded: DecodedImage
) -> None:
    fp = fingerprint(png_bytes(), {"mode": "autonomous"})
    with sm.begin() as s:
        assert find_idempotent(s, api_key_id, "k1", fp) is None
        job = submit_job(s, decoded=decoded, original_size=1, api_key_id=api_key_id)
        assert remember_idempotent(s, api_key_id, "k1", fp, job_id=job.id) is None
        job_id = job.id
    with sm() as s:
        found = find_idempotent(s, api_key_id, "k1", fp)
        assert isinstance(found, Job) and found.id == job_id
        with pytest.raises(IdempotencyConflict):
            find_idempotent(s, api_key_id, "k1", fingerprint(png_bytes((1, 2, 3)), {"mode": "autonomous"}))
        assert find_idempotent(s, api_key_id, "k2", fp) is None


def test_idempotency_race_returns_the_winner(sm: sessionmaker[Session], api_key_id: str, decoded: DecodedImage) -> None:
    """The loser of two inserts of the same key sees the winner's job (its own is rolled back)."""
    fp = fingerprint(b"x", {})
    with sm.begin() as s:
        winner = submit_job(s, decoded=decoded, original_size=1, api_key_id=api_key_id)
        remember_idempotent(s, api_key_id, "k", fp, job_id=winner.id)
        winner_id = winner.id
    with sm() as s:
        # as if find_idempotent ran before the winner committed: insert anyway
        loser = submit_job(s, decoded=decoded, original_size=1, api_key_id=api_key_id)
        existing = remember_idempotent(s, api_key_id, "k", fp, job_id=loser.id)
        assert isinstance(existing, Job) and existing.id == winner_id
        s.rollback()
    with sm() as s:
        with pytest.raises(IdempotencyConflict):
            loser2 = submit_job(s, decoded=decoded, original_size=1, api_key_id=api_key_id)
            remember_idempotent(s, api_key_id, "k", fingerprint(b"y", {}), job_id=loser2.id)
        s.rollback()
    with sm() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
        assert s.scalar(select(func.count()).select_from(IdempotencyKey)) == 1


def test_idempotency_for_a_batch(sm: sessionmaker[Session], api_key_id: str) -> None:
    fp = fingerprint(b"batch", {})
    with sm.begin() as s:
        batch = create_batch(s, api_key_id=api_key_id)
        assert remember_idempotent(s, api_key_id, "b", fp, batch_id=batch.id) is None
        batch_id = batch.id
    with sm() as s:
        found = find_idempotent(s, api_key_id, "b", fp)
        assert isinstance(found, Batch) and found.id == batch_id


def test_decode_helper_gives_png() -> None:
    assert decode_image(png_bytes()).format == "png"


@pytest.mark.parametrize("kind", ["job", "batch"])
@pytest.mark.parametrize("held_in", ["decode_image", "admit"])
def test_a_twin_that_committed_while_this_request_was_on_its_way_is_its_answer_not_a_429(
        sm: sessionmaker[Session], api_key_id: str, monkeypatch: pytest.MonkeyPatch, kind: str,
        held_in: str) -> None:
    """Request B with an Idempotency-Key is held after its key lookup (in its decode, or just
    before the early pending-limit look) while its twin A (same key, same content) is accepted
    and fills the key's pending limit: B answers with A's job or batch, as any replay does,
    rather than a refusal that A's own job caused."""
    data, gate, answers = png_bytes(), threading.Event(), {}
    real = getattr(intake, held_in)

    def held(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "B" and not gate.is_set():
            assert gate.wait(20)
        return real(*args, **kwargs)

    monkeypatch.setattr(intake, held_in, held)

    def run(name: str) -> None:
        options: dict[str, Any] = {"api_key_id": api_key_id, "enqueue": lambda _: True, "max_pixels": 10**8,
                                   "max_attempts": 3, "idempotency_key": "same", "max_pending": 1}
        if kind == "job":
            answers[name] = intake.accept_job(sm, intake.Upload(data), intake.JobOptions(), **options).id
        else:
            answers[name] = intake.accept_batch(sm, [intake.Upload(data)], intake.JobOptions(), **options)[0].id

    b = threading.Thread(target=run, args=("B",), name="B")
    b.start()
    time.sleep(0.3)  # B has looked the key up (nothing yet) and waits
    run("A")
    gate.set()
    b.join(timeout=30)
    assert answers["A"] == answers["B"]
    with sm() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
