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


class TooManyPending(JobsError):
    """The key's queued and running jobs plus ``asked`` new ones would pass its limit
    (``FADA_MAX_PENDING_PER_KEY``): 429 while some finish, or 422 when ``asked`` alone is
    more than the limit and no wait helps."""

    def __init__(self, pending: int, asked: int, limit: int) -> None:
        self.pending, self.asked, self.limit = pending, asked, limit
        if self.never:
            message = f"{asked} images at once; this service takes at most {limit} queued or running per API key"
        else:
            message = (f"this API key has {pending} jobs queued or running and may have at most {limit}; "
                       f"submit again once some have finished")
        super().__init__(message)

    @property
    def never(self) -> bool:
        return self.asked > self.limit
