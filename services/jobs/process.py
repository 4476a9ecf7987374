"""Running one job on a worker: claim under a lease, keep the lease alive while the model
works, store the result (or the failure) in one transaction.

Safe under any delivery: a second message for a job that is running elsewhere, finished or
canceled does nothing (the claim is a conditional UPDATE), and only the lease owner can store
a result, so a redelivered job never gets a second one.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from services.pipeline.runner import Mode, Pipeline, ResumeError
from shared.db.models import JobMode, JobStatus
from shared.schemas.results import ResultDocument

from .images import StoredImageError, load_decoded
from .lifecycle import ClaimedJob, claim, complete, fail, release_for_retry, renew_lease

log = logging.getLogger(__name__)

BAD_IMAGE_CODE = "image_unreadable"
BAD_RESUME_CODE = "resume_rejected"


class Outcome(enum.StrEnum):
    skipped = "skipped"  # not claimable: finished, canceled, awaiting review, or leased elsewhere
    succeeded = "succeeded"
    awaiting_review = "awaiting_review"
    requeued = "requeued"  # a transient error with attempts left: enqueue the id again
    failed = "failed"
    lease_lost = "lease_lost"  # the sweeper took the job back while we worked (e.g. we stalled)


@dataclass(frozen=True)
class JobRun:
    job_id: str
    outcome: Outcome
    attempts: int | None = None


class LeaseKeeper:
    """Renews a job's lease every third of its length on a background thread, so a job that
    runs long keeps its lease while a worker that dies loses it within ``lease_seconds``."""

    def __init__(self, sm: sessionmaker[Session], job_id: str, owner: str, lease_seconds: float) -> None:
        self._sm, self._job_id, self._owner, self._seconds = sm, job_id, owner, lease_seconds
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id[:8]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._seconds / 3):
            try:
                with self._sm.begin() as session:
                    if not renew_lease(session, self._job_id, self._owner, int(max(1, self._seconds))):
                        self.lost = True
                        return
            except Exception as exc:  # a database blip: try again next period, the lease has slack
                log.warning("lease renewal for job %s failed: %s", self._job_id, exc)


def process_job(
    sm: sessionmaker[Session],
    pipeline: Pipeline,
    job_id: str,
    *,
    owner: str,
    lease_seconds: float,
    on_claimed: Callable[[ClaimedJob], None] | None = None,
) -> JobRun:
    """Claim ``job_id`` and run it to its next resting state. Never raises for the job's own
    errors: a bad image or a rejected resume fails the job, anything else releases it for a
    retry (``Outcome.requeued``: the caller enqueues it again) until attempts run out."""
    with sm.begin() as session:
        claimed = claim(session, job_id, owner=owner, lease_seconds=int(max(1, lease_seconds)))
    if claimed is None:
        return JobRun(job_id, Outcome.skipped)
    if on_claimed is not None:
        on_claimed(claimed)
    try:
        with LeaseKeeper(sm, job_id, owner, lease_seconds):
            document, awaiting = _run_pipeline(sm, pipeline, claimed)
    except StoredImageError as exc:
        return _finish_failed(sm, claimed, BAD_IMAGE_CODE, f"the stored image cannot be read: {exc}")
    except ResumeError as exc:
        return _finish_failed(sm, claimed, BAD_RESUME_CODE, str(exc))
    except Exception as exc:
        log.exception("job %s attempt %d failed", job_id, claimed.attempts)
        with sm.begin() as session:
            status = release_for_retry(session, job_id, owner, f"{type(exc).__name__}: {exc}")
        if status is None:
            return JobRun(job_id, Outcome.lease_lost, claimed.attempts)
        outcome = Outcome.requeued if status is JobStatus.queued else Outcome.failed
        return JobRun(job_id, outcome, claimed.attempts)
    with sm.begin() as session:
        stored = complete(session, job_id, owner, document, awaiting_review=awaiting)
    if not stored:
        return JobRun(job_id, Outcome.lease_lost, claimed.attempts)
    return JobRun(job_id, Outcome.awaiting_review if awaiting else Outcome.succeeded, claimed.attempts)


def _run_pipeline(sm: sessionmaker[Session], pipeline: Pipeline, claimed: ClaimedJob) -> tuple[ResultDocument, bool]:
    """The model work, outside any transaction. Returns the document and whether the job now
    waits for a reviewer (first stage of a HITL job)."""
    with sm() as session:
        decoded = load_decoded(session, claimed.image_id)
    if claimed.resuming:
        if claimed.hitl_state is None:
            raise ResumeError("the job has a reviewer's choice but no saved pipeline state")
        choice = claimed.hitl_choice or {}
        state = ResultDocument.model_validate(claimed.hitl_state)
        document = pipeline.resume(decoded, state, phases=choice.get("next_phases") or [], group=choice.get("group"))
        return document, False
    mode: Mode = "hitl" if claimed.mode is JobMode.hitl else "autonomous"
    document = pipeline.analyze(decoded, mode=mode)
    return document, mode == "hitl"


def _finish_failed(sm: sessionmaker[Session], claimed: ClaimedJob, code: str, detail: str) -> JobRun:
    log.warning("job %s failed: %s: %s", claimed.id, code, detail)
    with sm.begin() as session:
        done = fail(session, claimed.id, claimed.owner, code, detail)
    return JobRun(claimed.id, Outcome.failed if done else Outcome.lease_lost, claimed.attempts)
