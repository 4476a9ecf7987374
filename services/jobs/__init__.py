"""The job state machine: submit, claim (one job or a batch, under a lease), complete, fail,
retry, cancel, resume, sweep, and reading jobs back. Plain functions over a SQLAlchemy
``Session``; none of them commits."""

from .errors import IdempotencyConflict, InvalidCursor, InvalidTransition, JobNotFound, JobsError, TooManyPending
from .idempotency import find_idempotent, fingerprint, forget_if_ended_without_result, remember_idempotent
from .images import ImagePurged, stored_png
from .lifecycle import (
    MAX_ATTEMPTS_CODE,
    REJECTED_DETAIL,
    TIME_LIMIT_CODE,
    ClaimedJob,
    cancel,
    claim,
    claim_ready,
    complete,
    fail,
    finish_hitl,
    rejected_by_reviewer,
    release_for_retry,
    renew_lease,
    renew_leases,
    resume_hitl,
)
from .listing import Page, batch_counts, decode_cursor, encode_cursor, get_job, get_result, list_jobs, status_counts
from .publishing import Enqueue, mark_queued_unpublished, publish_jobs
from .results import current_document
from .retention import count_purgeable, purge_all, purge_images
from .submit import create_batch, encode_png, submit_job
from .sweeper import SweepReport, sweep, untouch

__all__ = [
    "MAX_ATTEMPTS_CODE",
    "REJECTED_DETAIL",
    "TIME_LIMIT_CODE",
    "ClaimedJob",
    "Enqueue",
    "IdempotencyConflict",
    "ImagePurged",
    "InvalidCursor",
    "InvalidTransition",
    "JobNotFound",
    "JobsError",
    "Page",
    "SweepReport",
    "TooManyPending",
    "batch_counts",
    "cancel",
    "claim",
    "claim_ready",
    "complete",
    "count_purgeable",
    "create_batch",
    "current_document",
    "decode_cursor",
    "encode_cursor",
    "encode_png",
    "fail",
    "find_idempotent",
    "fingerprint",
    "finish_hitl",
    "forget_if_ended_without_result",
    "get_job",
    "get_result",
    "list_jobs",
    "mark_queued_unpublished",
    "publish_jobs",
    "purge_all",
    "purge_images",
    "rejected_by_reviewer",
    "release_for_retry",
    "remember_idempotent",
    "renew_lease",
    "renew_leases",
    "resume_hitl",
    "status_counts",
    "stored_png",
    "submit_job",
    "sweep",
    "untouch",
]
