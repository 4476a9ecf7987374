"""Celery tasks: each takes a job id and calls services; the database holds the rest."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from services.jobs.process import JobRun, Outcome, process_batch
from services.queue import TASK_RUN_JOB, enqueue_job

from . import runtime
from .app import app
from .app import settings as app_settings


@app.task(name=TASK_RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str:
    """Run ``job_id``, and up to ``batch_size - 1`` other ready jobs with it, to their next
    resting state. Idempotent: a job that is finished, canceled, awaiting review or leased by
    another live worker is left alone (the others' own messages then find them taken).
    Returns a summary for the worker's log, e.g. ``"3 succeeded, 1 awaiting_review"``."""
    state = runtime.current(app_settings)
    settings = state.settings
    runs = process_batch(state.sm, state.runtime.pipeline, job_id, owner=state.owner,
                         lease_seconds=settings.lease_seconds, batch_size=settings.batch_size,
                         linger_seconds=settings.batch_linger_seconds)
    for run in runs:
        if run.outcome is Outcome.requeued:
            enqueue_job(app, run.job_id)
    return summary(runs)


def summary(runs: Sequence[JobRun]) -> str:
    """How many jobs ended how, in the order of ``Outcome``."""
    counts = Counter(run.outcome for run in runs)
    return ", ".join(f"{counts[outcome]} {outcome.value}" for outcome in Outcome if counts[outcome])
