"""Running jobs on a worker: claim a batch of ready jobs under leases, keep the leases alive
while the model works, store each result (or failure) in its own transaction.

Batching across jobs: a worker woken by the message for one job also claims up to
``batch_size - 1`` other ready jobs from the database and runs them through the model
together (``Pipeline.run_batch``); their own messages later find them claimed or finished
and do nothing. The database stays the truth; the broker only wakes workers up.

Safe under any delivery: a second message for a job that is running elsewhere, finished or
canceled does nothing (the claim is a conditional UPDATE), and only the lease owner can store
a result, so a redelivered job never gets a second one.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from sqlalchemy.orm import Session, sessionmaker

from services.pipeline.runner import Abandoned, BatchItem, Mode, Pipeline, ResumeError
from shared.db.models import JobMode, JobStatus
from shared.db.outage import database_full, database_unavailable, short_reason
from shared.schemas.results import ResultDocument

from .images import StoredImageError, load_decoded
from .lifecycle import ClaimedJob, claim_ready, complete, fail, release_for_retry, renew_leases

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
    """Renews the leases of the jobs a worker holds, all in one UPDATE, every third of their
    length on a background thread: a batch that runs long keeps its leases, while a worker
    that dies loses them within ``lease_seconds``. A job whose lease was taken back (another
    worker claimed it after we stalled past its lease) is dropped and ``taken_back``: the model
    stops working on it, and storing anything for it would fail on the owner check anyway."""

    def __init__(self, sm: sessionmaker[Session], owner: str, lease_seconds: float, job_ids: Iterable[str]) -> None:
        self._sm, self._owner, self._seconds = sm, owner, lease_seconds
        self._ids = set(job_ids)
        self._lost: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{owner[-12:]}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def add(self, job_ids: Iterable[str]) -> None:
        with self._lock:
            self._ids.update(job_ids)

    def drop(self, job_id: str) -> None:
        """Stop renewing a job we are done with (settled early, e.g. an unreadable image)."""
        with self._lock:
            self._ids.discard(job_id)

    def taken_back(self, job_id: str) -> Callable[[], bool]:
        """For the pipeline: whether the job's lease has been found lost (read at every decode
        step, so a set lookup and no lock)."""
        return lambda: job_id in self._lost

    def _run(self) -> None:
        while not self._stop.wait(self._seconds / 3):
            with self._lock:
                ids = set(self._ids)
            try:
                with self._sm.begin() as session:
                    renewed = renew_leases(session, ids, self._owner, _lease(self._seconds))
            except Exception as exc:  # a database blip: try again next period, the lease has slack
                log.warning("lease renewal for %d jobs failed: %s", len(ids), exc)
                continue
            with self._lock:
                lost = (ids - renewed) & self._ids  # not those dropped meanwhile
                self._ids -= lost
                self._lost |= lost
            for job_id in lost:
                log.warning("job %s was taken back while the model worked (failed for its time limit, or claimed "
                            "by another worker after this one stalled); its model work stops", job_id)


def process_job(sm: sessionmaker[Session], pipeline: Pipeline, job_id: str, *, owner: str,
                lease_seconds: float) -> JobRun:
    """Claim ``job_id`` alone and run it to its next resting state: a batch of one."""
    return process_batch(sm, pipeline, job_id, owner=owner, lease_seconds=lease_seconds, batch_size=1)[0]


def process_batch(
    sm: sessionmaker[Session],
    pipeline: Pipeline,
    first_job_id: str,
    *,
    owner: str,
    lease_seconds: float,
    batch_size: int,
    linger_seconds: float = 0.0,
) -> list[JobRun]:
    """Claim ``first_job_id`` plus up to ``batch_size - 1`` other ready jobs, run them through
    the model together, and bring each to its next resting state. The first run returned is
    always ``first_job_id``'s (``Outcome.skipped`` when it was not claimable).

    ``linger_seconds``: when the claim got fewer than ``batch_size`` jobs, wait once that long
    and claim more, so a burst of submissions fills the batch (on a GPU a full batch costs
    little more than one image). Nothing is lingered for when nothing was claimed.

    Never raises for the jobs' own errors: a bad image or a rejected resume fails that job
    alone; any other error of a job releases it for a retry (``Outcome.requeued``: the caller
    enqueues it again) until its attempts run out; when the batch fails as a whole (e.g. CUDA
    out of memory), each job is run alone and gets its own outcome.
    """
    lease = _lease(lease_seconds)
    with sm.begin() as session:
        jobs = claim_ready(session, owner=owner, lease_seconds=lease, limit=batch_size, first=first_job_id)
    skipped = [] if jobs and jobs[0].id == first_job_id else [JobRun(first_job_id, Outcome.skipped)]
    if not jobs:
        return skipped
    with LeaseKeeper(sm, owner, lease_seconds, (job.id for job in jobs)) as keeper:
        if linger_seconds > 0 and len(jobs) < batch_size:
            time.sleep(linger_seconds)
            more = _claim_more(sm, owner=owner, lease_seconds=lease, limit=batch_size - len(jobs))
            keeper.add(job.id for job in more)
            jobs += more
        log.info("running %d job(s) together: %s", len(jobs), ", ".join(job.id for job in jobs))
        outputs = _run(sm, pipeline, jobs, keeper)
        # Settled while the keeper still renews the leases of the jobs not settled yet (each is
        # dropped first: its renewal would fail once it is stored). A database that is briefly
        # gone is waited for up to one lease length; the sweeper takes the jobs back after that.
        patience = time.monotonic() + lease_seconds
        runs = list(skipped)
        for job in jobs:
            keeper.drop(job.id)
            runs.append(_settle_alone(sm, job, outputs[job.id], until=patience))
        return runs


def _claim_more(sm: sessionmaker[Session], *, owner: str, lease_seconds: int, limit: int) -> list[ClaimedJob]:
    """Top the batch up after lingering. A database error here must not strand the jobs
    already claimed (they would wait for their leases to expire): run without the extra ones."""
    try:
        with sm.begin() as session:
            return claim_ready(session, owner=owner, lease_seconds=lease_seconds, limit=limit)
    except Exception as exc:
        log.warning("could not claim more jobs for the batch: %s", exc)
        return []


# -- the model work -------------------------------------------------------------------------


# What became of a job's model run: its document, the exception for it, or a JobRun when it
# was settled before the model ran (e.g. an unreadable image).
_Output: TypeAlias = ResultDocument | Exception | JobRun


def _run(sm: sessionmaker[Session], pipeline: Pipeline, jobs: Sequence[ClaimedJob],
         keeper: LeaseKeeper) -> dict[str, _Output]:
    """Each job's output: its document, or the exception for it. Jobs whose input cannot be
    built are settled at once (no model time spent on them). Runs outside any transaction."""
    outputs: dict[str, _Output] = {}
    items: dict[str, BatchItem] = {}
    for job, item in zip(jobs, _batch_items(sm, jobs, keeper), strict=True):
        if isinstance(item, BatchItem):
            items[job.id] = item
        else:
            keeper.drop(job.id)
            outputs[job.id] = _settle_alone(sm, job, item)
    if not items:
        return outputs
    try:
        results = _infer(pipeline, list(items.values()))
        if len(results) != len(items):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
    except Exception:
        # The batch failed as a whole (out of memory, or one input the batched path cannot
        # take): run each job alone, so that each gets its own outcome and the others of a
        # bad input are not charged an attempt for it.
        log.exception("a batch of %d job(s) failed as a whole; running each alone", len(items))
        results = [output for item in items.values() for output in _infer(pipeline, [item])]
    outputs.update(zip(items, results, strict=True))
    return outputs


def _infer(pipeline: Pipeline, items: Sequence[BatchItem]) -> list[ResultDocument | Exception]:
    """The model run. A single item goes through the per-image entry points (``analyze`` /
    ``resume``, themselves a batch of one), so a worker at batch size 1 calls the pipeline
    exactly as it always did; its errors are then that item's own."""
    if len(items) != 1:
        return pipeline.run_batch(items)
    [item] = items
    try:
        if item.resume_state is None:
            return [pipeline.analyze(item.decoded, mode=item.mode, abandoned=item.abandoned)]
        return [pipeline.resume(item.decoded, item.resume_state, phases=item.phases, group=item.group,
                                corrected_label=item.corrected_label,
                                corrected_interpretation=item.corrected_interpretation, abandoned=item.abandoned)]
    except Exception as exc:
        return [exc]


def _batch_items(sm: sessionmaker[Session], jobs: Sequence[ClaimedJob],
                 keeper: LeaseKeeper) -> list[BatchItem | Exception]:
    """Each job's input, or the exception that building it raised; one short read session
    (closed before anything is written: on SQLite a session holds the write lock)."""
    items: list[BatchItem | Exception] = []
    with sm() as session:
        for job in jobs:
            try:
                items.append(_batch_item(session, job, keeper.taken_back(job.id)))
            except Exception as exc:
                items.append(exc)
    return items


def _batch_item(session: Session, job: ClaimedJob, abandoned: Callable[[], bool]) -> BatchItem:
    """The pipeline's input for a job: its stored image, and for the second stage of a HITL
    job the saved document with the reviewer's choice of phases and group."""
    decoded = load_decoded(session, job.image_id)
    mode: Mode = "hitl" if job.mode is JobMode.hitl else "autonomous"
    if not job.resuming:
        return BatchItem(decoded, mode=mode, abandoned=abandoned)
    if job.hitl_state is None:
        raise ResumeError("the job has a reviewer's choice but no saved pipeline state")
    choice = job.hitl_choice or {}
    return BatchItem(decoded, mode=mode, resume_state=ResultDocument.model_validate(job.hitl_state),
                     phases=choice.get("next_phases") or [], group=choice.get("group"),
                     corrected_label=choice.get("label"), corrected_interpretation=choice.get("interpretation"),
                     abandoned=abandoned)


# -- storing the outcome --------------------------------------------------------------------


def _settle(sm: sessionmaker[Session], job: ClaimedJob, output: _Output) -> JobRun:
    """Bring one claimed job to its resting state from its output, in its own transaction."""
    if isinstance(output, JobRun):
        return output
    if isinstance(output, StoredImageError):
        return _finish_failed(sm, job, BAD_IMAGE_CODE, f"the stored image cannot be read: {output}")
    if isinstance(output, ResumeError):
        return _finish_failed(sm, job, BAD_RESUME_CODE, str(output))
    if isinstance(output, Abandoned):  # another worker holds it now: nothing of ours to write
        return JobRun(job.id, Outcome.lease_lost, job.attempts)
    if isinstance(output, Exception):
        log.error("job %s attempt %d failed", job.id, job.attempts, exc_info=output)
        return _release(sm, job, f"{type(output).__name__}: {output}")
    return _store(sm, job, output)


def _settle_alone(sm: sessionmaker[Session], job: ClaimedJob, output: _Output, *, until: float = 0.0) -> JobRun:
    """``_settle``, but an error while writing one job's outcome is that job's alone. A
    database that cannot be reached is tried again until ``until`` (monotonic seconds), so a
    restart of a few seconds costs no model work (the write is conditional on this worker's
    lease: if the sweeper took the job back meanwhile, it is ``lease_lost``, not stored twice).
    Any other error (the database refused its result) releases the job for a retry, counted
    against its attempts, and the next jobs of the batch are still settled. If even that write
    fails, the job is left to its lease and the sweeper."""
    pause = 0.5
    while True:
        try:
            return _settle(sm, job, output)
        except Exception as exc:
            if not database_unavailable(exc) or time.monotonic() + pause >= until:
                return _settle_failed(sm, job, exc)
            if database_full(exc):  # an operator must free space: say so, not "unavailable"
                log.error("job %s: the database's disk is full (%s); storing its outcome again in %.1f s",
                          job.id, short_reason(exc), pause)
            else:
                log.warning("job %s: the database is unavailable (%s); storing its outcome again in %.1f s",
                            job.id, short_reason(exc), pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def _settle_failed(sm: sessionmaker[Session], job: ClaimedJob, exc: Exception) -> JobRun:
    log.error("job %s: its outcome could not be stored", job.id, exc_info=exc)
    try:
        return _release(sm, job, f"the result could not be stored: {type(exc).__name__}: {exc}"[:1000])
    except Exception:
        log.exception("job %s: not released either; its lease will expire", job.id)
        return JobRun(job.id, Outcome.lease_lost, job.attempts)


def _store(sm: sessionmaker[Session], job: ClaimedJob, document: ResultDocument) -> JobRun:
    awaiting = job.mode is JobMode.hitl and not job.resuming  # the first stage of a HITL job
    with sm.begin() as session:
        stored = complete(session, job.id, job.owner, document, awaiting_review=awaiting)
    if not stored:
        return JobRun(job.id, Outcome.lease_lost, job.attempts)
    return JobRun(job.id, Outcome.awaiting_review if awaiting else Outcome.succeeded, job.attempts)


def _release(sm: sessionmaker[Session], job: ClaimedJob, detail: str) -> JobRun:
    """A transient error: back to the queue while attempts remain, else failed."""
    with sm.begin() as session:
        status = release_for_retry(session, job.id, job.owner, detail)
    if status is None:
        return JobRun(job.id, Outcome.lease_lost, job.attempts)
    return JobRun(job.id, Outcome.requeued if status is JobStatus.queued else Outcome.failed, job.attempts)


def _finish_failed(sm: sessionmaker[Session], job: ClaimedJob, code: str, detail: str) -> JobRun:
    log.warning("job %s failed: %s: %s", job.id, code, detail)
    with sm.begin() as session:
        done = fail(session, job.id, job.owner, code, detail)
    return JobRun(job.id, Outcome.failed if done else Outcome.lease_lost, job.attempts)


def _lease(seconds: float) -> int:
    """Lease lengths are whole seconds in the database calls; never under one."""
    return int(max(1, seconds))
