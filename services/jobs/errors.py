"""Errors of the job state machine; the API maps them to HTTP answers."""

from __future__ import annotations


class JobsError(Exception):
    """Base class of the errors raised by ``services.jobs``."""


class JobNotFound(JobsError):
    """No job with this id (404)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class InvalidTransition(JobsError):
    """The job is not in a state that allows the change (409). ``current`` is its status."""

    def __init__(self, job_id: str, current: str, action: str) -> None:
        super().__init__(f"cannot {action} job {job_id}: it is {current}")
        self.job_id = job_id
        self.current = current
        self.action = action


class IdempotencyConflict(JobsError):
    """The ``Idempotency-Key`` was used before with another request (422)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used with a different request")
        self.key = key


class InvalidCursor(JobsError):
    """A pagination cursor that this service did not hand out (422/400)."""
