"""Accepting uploads: decode (refusing bad input before anything is stored), honour the
``Idempotency-Key``, store image + job in one transaction, then enqueue the id.

Every refusal raises before the transaction commits, so a refused upload leaves no row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from services.ingest import DecodedImage, IngestError, decode_image
from shared.db.models import Batch, Job, JobMode

from .admission import admit
from .errors import IdempotencyConflict, TooManyPending
from .idempotency import find_idempotent, fingerprint, remember_idempotent
from .publishing import Enqueue, publish_jobs
from .submit import create_batch, submit_job


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str | None = None


@dataclass(frozen=True)
class JobOptions:
    mode: JobMode = JobMode.autonomous
    external_id: str | None = None
    frame: int | None = 0  # None: a DICOM's representative frame (what STOW-RS analyses), else 0
    # Notifications, resolved by the caller (services.notify.plan_notifications): where this
    # job's webhook events go, and whether a DICOM job's result is pushed to the PACS. Not
    # part of the Idempotency-Key fingerprint: they say where news goes, not what to analyse.
    webhook_url: str | None = None
    pacs_push: bool = False
    # The gateway's address as the caller reached it: the base of the events' links.
    links_base: str | None = None

    def fields(self) -> dict[str, object]:
        # None counts as 0: the upload's own bytes decide which frame it is, and STOW-RS pushes
        # stored when it always analysed frame 0 must still replay as the same request.
        return {"mode": self.mode.value, "external_id": self.external_id, "frame": self.frame or 0}


class _LostRace(Exception):
    """Raised inside the transaction to roll it back: a concurrent request with the same
    Idempotency-Key committed first; its job or batch is the answer."""

    def __init__(self, target_id: str) -> None:
        super().__init__(target_id)
        self.target_id = target_id


@dataclass(frozen=True)
class Accepted:
    """``created`` is False when an ``Idempotency-Key`` replay returned the original."""

    id: str
    created: bool


def accept_job(
    sm: sessionmaker[Session],
    upload: Upload,
    options: JobOptions,
    *,
    api_key_id: str,
    enqueue: Enqueue,
    max_pixels: int,
    max_attempts: int,
    idempotency_key: str | None = None,
    max_pending: int | None = None,
) -> Accepted:
    """One upload -> one queued job. Raises ``IngestError`` (bad image),
    ``IdempotencyConflict`` (key reused with another request) or ``TooManyPending`` (the key
    has ``max_pending`` jobs queued or running; a replay of an accepted request is answered
    all the same)."""
    print_ = fingerprint(upload.data, {"kind": "job", **options.fields()}) if idempotency_key else ""
    if idempotency_key:
        with sm() as session:
            earlier = find_idempotent(session, api_key_id, idempotency_key, print_)
            if earlier is not None:
                return Accepted(earlier.id, created=False)
    try:
        _look_early(sm, api_key_id, 1, max_pending)
        decoded = decode_image(upload.data, frame=options.frame, max_pixels=max_pixels)
        with sm.begin() as session:
            admit(session, api_key_id, 1, max_pending)
            job = submit_job(session, decoded=decoded, original_size=len(upload.data), api_key_id=api_key_id,
                             mode=options.mode, external_id=options.external_id, max_attempts=max_attempts,
                             webhook_url=options.webhook_url, links_base=options.links_base,
                             pacs_push=options.pacs_push)
            job_id = job.id
            if idempotency_key:
                earlier = remember_idempotent(session, api_key_id, idempotency_key, print_, job_id=job_id)
                if earlier is not None:
                    raise _LostRace(earlier.id)
    except _LostRace as race:
        return Accepted(race.target_id, created=False)
    except TooManyPending as refused:
        return Accepted(_committed_twin(sm, api_key_id, idempotency_key, print_, refused)[0], created=False)
    publish_jobs(sm, enqueue, [job_id])
    return Accepted(job_id, created=True)


def accept_batch(
    sm: sessionmaker[Session],
    uploads: Sequence[Upload],
    options: JobOptions,
    *,
    api_key_id: str,
    enqueue: Enqueue,
    max_pixels: int,
    max_attempts: int,
    idempotency_key: str | None = None,
    max_pending: int | None = None,
) -> tuple[Accepted, list[str]]:
    """Several uploads -> one batch of queued jobs, all or nothing: one bad file refuses the
    whole batch (its ``IngestError`` names the file). Returns the batch and its job
    ids in upload order."""
    print_ = ""
    if idempotency_key:
        print_ = fingerprint(b"".join(_digest(u.data) for u in uploads), {"kind": "batch", **options.fields()})
        with sm() as session:
            earlier = find_idempotent(session, api_key_id, idempotency_key, print_)
            if isinstance(earlier, Batch):
                return Accepted(earlier.id, created=False), [j.id for j in earlier.jobs]
    try:
        _look_early(sm, api_key_id, len(uploads), max_pending)
        decoded = [_decode(index, uploads, options.frame, max_pixels) for index in range(len(uploads))]
        with sm.begin() as session:
            admit(session, api_key_id, len(uploads), max_pending)
            batch = create_batch(session, api_key_id=api_key_id, external_id=None)
            jobs: list[Job] = [
                submit_job(session, decoded=d, original_size=len(u.data), api_key_id=api_key_id, mode=options.mode,
                           external_id=options.external_id, batch_id=batch.id, max_attempts=max_attempts,
                           webhook_url=options.webhook_url, links_base=options.links_base,
                             pacs_push=options.pacs_push)
                for d, u in zip(decoded, uploads, strict=True)
            ]
            batch_id, job_ids = batch.id, [j.id for j in jobs]
            if idempotency_key:
                earlier = remember_idempotent(session, api_key_id, idempotency_key, print_, batch_id=batch_id)
                if earlier is not None:
                    raise _LostRace(earlier.id)
    except _LostRace as race:
        with sm() as fresh:
            again = fresh.get(Batch, race.target_id)
            if again is None:  # the key named a job, not a batch: the same key for another request
                raise IdempotencyConflict(idempotency_key or "") from None
            return Accepted(again.id, created=False), [j.id for j in again.jobs]
    except TooManyPending as refused:
        twin = _committed_twin(sm, api_key_id, idempotency_key, print_, refused)
        return Accepted(twin[0], created=False), twin[1]
    publish_jobs(sm, enqueue, job_ids)
    return Accepted(batch_id, created=True), job_ids


def _look_early(sm: sessionmaker[Session], api_key_id: str, asked: int, limit: int | None) -> None:
    """Refuse a submission past the key's limit before its uploads are decoded (unlocked: the
    check in the storing transaction decides)."""
    if limit is not None:
        with sm() as session:
            admit(session, api_key_id, asked, limit, lock=False)


def _decode(index: int, uploads: Sequence[Upload], frame: int | None, max_pixels: int) -> DecodedImage:
    """One upload of a batch; its ``IngestError`` names the file as people count ("file 2 of
    3", and its name) and carries its 0-based position for programs (``file_index``)."""
    upload = uploads[index]
    try:
        return decode_image(upload.data, frame=frame, max_pixels=max_pixels)
    except IngestError as exc:
        name = f" ({upload.filename})" if upload.filename else ""
        exc.detail = f"file {index + 1} of {len(uploads)}{name}: {exc.detail}"
        exc.file_index = index
        raise


def _committed_twin(sm: sessionmaker[Session], api_key_id: str, key: str | None, print_: str,
                    refused: TooManyPending) -> tuple[str, list[str]]:
    """What a concurrent request with the same Idempotency-Key committed while this one was on
    its way (the pending-limit count that refused this one included it): its id and, for a
    batch, its job ids. Without such a twin, ``refused`` is the answer: it is raised."""
    if key:
        with sm() as session:
            twin = find_idempotent(session, api_key_id, key, print_)
            if twin is not None:
                return twin.id, [j.id for j in twin.jobs] if isinstance(twin, Batch) else []
    raise refused


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
