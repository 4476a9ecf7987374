"""A job's result document as callers read it: the stored document, told as the job now is.

The worker stores the document when a stage ends. A HITL job's first-stage document says
``awaiting_review``, its later phases skipped "awaiting the reviewer's choice". The job then
moves on without a worker rewriting that document: resumed (queued, running), canceled, or
failed in its second stage. Read as stored, the result would contradict the job (a canceled
job's result saying ``awaiting_review``); so its ``status`` is the job's, and a first-stage
document's later phases say why they did not run. A document stored before results named
their frame gets the frame (and frame count) from the image row, where they were recorded.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Image, Job, JobStatus, Result
from shared.schemas.results import PhaseReport, ResultDocument

from ._common import LATER_PHASES


def current_document(session: Session, job_id: str) -> ResultDocument | None:
    """The job's result document with the job's current status; None before it has one."""
    row = session.execute(
        select(Job.status, Job.error_code, Result.document, Image.frame, Image.frame_count)
        .join(Result, Result.job_id == Job.id).join(Image, Image.id == Job.image_id)
        .where(Job.id == job_id)
    ).first()
    if row is None:
        return None
    document = ResultDocument.model_validate(row.document)
    if document.image.frame_count is None:  # stored before results named their frame
        document.image = document.image.model_copy(update={"frame": row.frame, "frame_count": row.frame_count})
    status = JobStatus(row.status)
    if document.status == status.value:
        return document
    phases = document.phases
    if document.status == JobStatus.awaiting_review.value:  # a first-stage document whose job moved on
        why = _not_run(status, row.error_code)
        phases = {name: PhaseReport(status="skipped", detail=why)
                  if name in LATER_PHASES and report.status == "skipped" else report
                  for name, report in phases.items()}
    return document.model_copy(update={"status": status.value, "phases": phases})


def _not_run(status: JobStatus, error_code: str | None) -> str:
    if status is JobStatus.canceled:
        return "not run: the job was canceled"
    if status is JobStatus.failed:
        return f"not run: the job failed ({error_code})" if error_code else "not run: the job failed"
    return f"not run yet: the reviewer chose the later phases and the job is {status.value}"
