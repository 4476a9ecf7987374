"""The one error of this package: the ground truth cannot be evaluated, and why."""

from __future__ import annotations

from typing import Any


class EvaluationError(ValueError):
    """Bad input to an evaluation (the HTTP layer answers 422 with ``code`` and ``detail``).

    Codes: ``invalid_ground_truth`` (malformed COCO, or geometry outside its job's image or
    without area; ``extra["errors"]``), ``empty_ground_truth``, ``unknown_category``,
    ``unknown_view_label``, ``unknown_jobs`` (``extra["job_ids"]``), ``jobs_not_finished``
    (jobs that have not succeeded; ``extra["job_ids"]`` and ``extra["jobs"]``: id and status),
    ``image_size_mismatch``, ``unreadable_result``.
    """

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.code, self.detail, self.extra = code, detail, extra
