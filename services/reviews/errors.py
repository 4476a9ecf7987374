"""Errors of the review service; the API maps each to a problem document by its ``status``
and ``code``. A missing job is ``services.jobs.JobNotFound`` (404), as everywhere else."""

from __future__ import annotations

from typing import Any


class ReviewsError(Exception):
    """Base class: ``status`` is the HTTP status the API answers with, ``code`` the problem code."""

    status = 400
    code = "review_error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = extra  # extra members of the problem document (e.g. current_status)


class InvalidReview(ReviewsError):
    """The review's content does not fit the profile, the image or the job's mode (422)."""

    status = 422
    code = "invalid_review"


class ReviewConflict(ReviewsError):
    """The job's state does not allow this review now (409), e.g. no result yet."""

    status = 409
    code = "review_conflict"

    def __init__(self, detail: str, *, code: str = "review_conflict", **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.code = code


class ReviewExists(ReviewConflict):
    """This reviewer reviewed this job in this dimension already (409): amend it with PUT."""

    def __init__(self, job_id: str, dimension: str) -> None:
        super().__init__(
            f"you reviewed the {dimension} of job {job_id} already; "
            f"amend it with PUT /v1/jobs/{job_id}/reviews/{dimension}",
            code="review_exists",
        )


class ReviewNotFound(ReviewsError):
    """The caller has no review of this job in this dimension (404)."""

    status = 404
    code = "review_not_found"

    def __init__(self, job_id: str, dimension: str) -> None:
        super().__init__(f"you have no {dimension} review of job {job_id}")


class UnknownReview(ReviewsError):
    """No review of this job has this id (404): review ids come from ``GET /v1/jobs/{id}/reviews``."""

    status = 404
    code = "review_not_found"

    def __init__(self, job_id: str, review_id: str) -> None:
        super().__init__(f"job {job_id} has no review {review_id}")
