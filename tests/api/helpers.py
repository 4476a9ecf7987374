"""Builders and assertions shared by the API tests."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from typing import Any, Protocol

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import claim, complete
from services.models.loader import Provenance
from services.pipeline.profile import load_profile
from shared.db.models import AuditEvent, Batch, IdempotencyKey, Image, Job, Result
from shared.schemas.results import (
    Classification,
    Detection,
    ImageInfo,
    Keypoints,
    ModelInfo,
    PhaseReport,
    ResultDocument,
    Segmentation,
)
from tests.ingest.builders import encode, make_dicom, noise_rgb, sample_bytes

PROBLEM_TYPE = "application/problem+json"

# The job resource's fields, exactly as the contract lists them (extra fields are allowed).
CONTRACT_JOB_FIELDS = {"id", "status", "mode", "external_id", "created_at", "updated_at", "attempts", "error",
                       "review_state", "result_url"}


def png(seed: int = 0, width: int = 48, height: int = 32) -> bytes:
    return encode(noise_rgb(width, height, seed=seed), "PNG")


def jpeg(seed: int = 0) -> bytes:
    return encode(noise_rgb(64, 48, seed=seed), "JPEG", quality=90)


def ultrasound_dicom() -> bytes:
    """pydicom's examples_palette.dcm: a real obstetric ultrasound (800 x 350, palette colour)."""
    return sample_bytes("examples_palette.dcm")


def multiframe_dicom(frames: int = 2) -> bytes:
    return make_dicom(np.zeros((frames, 8, 8), dtype=np.uint8), "MONOCHROME2", NumberOfFrames=frames)


# One multipart part in a list of them: (field, (filename, content)) or (field, (filename, content, content type)).
FormPart = tuple[str, tuple[str | None, bytes | str] | tuple[str | None, bytes | str, str | None]]


def file_part(data: bytes, name: str = "scan.bin", content_type: str = "application/octet-stream") -> dict[str, Any]:
    return {"file": (name, data, content_type)}


class HTTPResponse(Protocol):
    """What the assertions read of a response: an httpx one (a live server), or the one Starlette's
    TestClient answers with (an httpx2 response where httpx2 is installed, which httpx's type does not cover)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def text(self) -> str: ...

    @property
    def content(self) -> bytes: ...

    def json(self, **kwargs: Any) -> Any: ...


def assert_problem(response: HTTPResponse, status: int, code: str | None = None) -> dict[str, Any]:
    """The answer is an RFC 9457 problem document with this status (and code)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0].strip() == PROBLEM_TYPE, response.headers
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "code"} <= body.keys(), body
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert isinstance(body["type"], str) and body["type"]
    if code is not None:
        assert body["code"] == code, body
        assert body["type"].endswith(code), body
    assert "Traceback" not in response.text
    return body


def count(sm: sessionmaker[Session], model: type[Any]) -> int:
    with sm() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def stored(sm: sessionmaker[Session]) -> dict[str, int]:
    """Rows of everything a submission stores."""
    return {m.__tablename__: count(sm, m) for m in (Job, Image, Batch, Result, IdempotencyKey)}


NOTHING_STORED = {"jobs": 0, "images": 0, "batches": 0, "results": 0, "idempotency_keys": 0}


def audit_events(sm: sessionmaker[Session]) -> list[AuditEvent]:
    with sm() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.at, AuditEvent.id)))


def enqueued_job_ids(broker_url: str) -> list[str]:
    """Job ids of the ``fada.run_job`` messages waiting in the embedded SQLite broker."""
    path = broker_url.removeprefix("sqla+sqlite:///")
    with closing(sqlite3.connect(path)) as conn:
        has_table = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'kombu_message'").fetchone()[0]
        if not has_table:
            return []
        payloads = [row[0] for row in conn.execute("SELECT payload FROM kombu_message WHERE visible = 1")]
    ids: list[str] = []
    for payload in payloads:
        message = json.loads(payload)
        if message["headers"]["task"] == "fada.run_job":
            args = json.loads(base64.b64decode(message["body"]))[0]
            ids.append(args[0])
    return ids


# --- results, as a worker would store them ------------------------------------------------------

OWNER = "test-worker:1:gpu"
# What a worker with a loaded model reports in its heartbeat (services.workers.beat).
PROVENANCE = Provenance(base="tiny/base", adapter=None, revision="rev-42", profile="fada-skd", profile_version="1",
                        untrained=True, merged=False, dtype="float32", device="cpu")
PROFILE = load_profile("fada-skd")


def category_id(label: str) -> int:
    return PROFILE.classes.index(label) + 1


def make_document() -> ResultDocument:
    """A result with one item of every kind (labels from the fada-skd profile)."""
    return ResultDocument(
        status="succeeded",
        model=ModelInfo(base="tiny/base", adapter="tiny/adapter", revision="rev-7", profile="fada-skd",
                        untrained=True),
        image=ImageInfo(width=48, height=32, sha256="a" * 64, format="png", pixel_spacing_mm=(0.1, 0.1)),
        classification=Classification(label="head"),
        detections=[
            Detection(id=1, label="NT", category_id=category_id("NT"), bbox=(1, 2, 10, 4), score=0.9),
            Detection(id=2, label="NB", category_id=category_id("NB"), bbox=(20, 5, 6, 8)),
        ],
        segmentations=[
            Segmentation(id=1, label="head", category_id=category_id("head"), bbox=(2, 2, 20, 20),
                         segmentation=[[2, 2, 22, 2, 22, 22, 2, 22]], area=400.0, score=0.5),
        ],
        keypoints=[
            Keypoints(id=1, label="CRL_KP", category_id=category_id("CRL_KP"), bbox=(5, 5, 10, 10),
                      keypoints=[5, 5, 2, 15, 15, 2], num_keypoints=2),
        ],
        phases={"classify": PhaseReport(status="ok", latency_ms=12.5), "interpret": PhaseReport(status="skipped")},
    )


def run_job(sm: sessionmaker[Session], job_id: str) -> None:
    """queued -> running, as a worker's claim."""
    with sm.begin() as session:
        assert claim(session, job_id, owner=OWNER, lease_seconds=60) is not None


def succeed_job(sm: sessionmaker[Session], job_id: str, *, awaiting_review: bool = False) -> ResultDocument:
    """Claim the job and store ``make_document()`` as its result (succeeded, or awaiting review)."""
    document = make_document()
    run_job(sm, job_id)
    with sm.begin() as session:
        assert complete(session, job_id, OWNER, document, awaiting_review=awaiting_review)
    return document
