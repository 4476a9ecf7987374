"""Celery tasks: each takes a job id and calls services; the database holds the rest."""

from __future__ import annotations

from services.jobs.process import Outcome, process_job
from services.queue import TASK_RUN_JOB, enqueue_job

from . import runtime
from .app import app


@app.task(name=TASK_RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str:
    """Run one job to its next resting state. Idempotent: a job that is finished, canceled,
    awaiting review or leased by another live worker is left alone."""
    state = runtime.current()
    run = process_job(state.sm, state.runtime.pipeline, job_id, owner=state.owner,
                      lease_seconds=state.settings.lease_seconds)
    if run.outcome is Outcome.requeued:
        enqueue_job(app, job_id)
    return run.outcome.value
