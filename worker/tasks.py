"""Celery tasks: each takes a job id and calls services; the database holds the rest."""

from __future__ import annotations

import faulthandler
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from celery.exceptions import Reject

from services.jobs import publish_jobs
from services.jobs.process import JobRun, Outcome, process_batch
from services.queue import TASK_RUN_JOB, process_limit_seconds, publisher
from shared.db.outage import database_unavailable, short_reason

from . import runtime
from .app import app
from .app import settings as app_settings

log = logging.getLogger(__name__)

# How long a task holds its message while the database cannot be reached, before handing it
# back to the queue: under the 60 s the task's time limit allows beyond a job's (services.queue).
DATABASE_WAIT_SECONDS = 45.0


@app.task(name=TASK_RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(job_id: str) -> str:
    """Run ``job_id``, and up to ``batch_size - 1`` other ready jobs with it, to their next
    resting state. Idempotent: a job that is finished, canceled, awaiting review or leased by
    another live worker is left alone (the others' own messages then find them taken).
    Returns a summary for the worker's log, e.g. ``"3 succeeded, 1 awaiting_review"``."""
    with process_time_limit(process_limit_seconds(app_settings)):
        state = runtime.current(app_settings)
        settings = state.settings
        runs = when_the_database_answers(job_id, lambda: process_batch(
            state.sm, state.runtime.pipeline, job_id, owner=state.owner, lease_seconds=settings.lease_seconds,
            batch_size=settings.batch_size, linger_seconds=settings.batch_linger_seconds))
    publish_jobs(state.sm, publisher(app), [run.job_id for run in runs if run.outcome is Outcome.requeued])
    return summary(runs)


def summary(runs: Sequence[JobRun]) -> str:
    """How many jobs ended how, in the order of ``Outcome``."""
    counts = Counter(run.outcome for run in runs)
    return ", ".join(f"{counts[outcome]} {outcome.value}" for outcome in Outcome if counts[outcome])


def when_the_database_answers(job_id: str, work: Callable[[], list[JobRun]], *,
                              patience: float = DATABASE_WAIT_SECONDS) -> list[JobRun]:
    """``work()``, tried again while the database cannot be reached, for up to ``patience``
    seconds; then the message goes back to the queue (``Reject(requeue=True)``). A task that
    failed instead would have its message acknowledged and dropped: with the database down a
    worker would empty the whole queue that way, each job then waiting for the sweeper's
    grace period. Holding one message keeps the rest in the broker."""
    deadline, pause = time.monotonic() + patience, 1.0
    while True:
        try:
            return work()
        except Exception as exc:
            if not database_unavailable(exc):
                raise
            if time.monotonic() + pause > deadline:
                log.warning("job %s: the database is still unavailable (%s); its message goes back to the queue",
                            job_id, short_reason(exc))
                raise Reject(f"database unavailable: {short_reason(exc)}", requeue=True) from exc
            if pause == 1.0:
                log.warning("job %s waits for the database (%s), up to %.0f s, holding its message", job_id,
                            short_reason(exc), patience)
            time.sleep(pause)
            pause = min(pause * 2, 10.0)


@contextmanager
def process_time_limit(seconds: float) -> Iterator[None]:
    """Past ``seconds`` this pool process writes every thread's stack to its stderr and exits
    (faulthandler's watchdog, a C thread: it fires even in a hang that holds the GIL). The
    process's death gives its message back (``reject_on_worker_lost``) and Celery starts a new
    one; the sweeper has failed the job for its time limit by then. Judged here rather than by
    Celery's parent, which reads no results while it reconnects to the broker (see
    ``services.queue``)."""
    # fd 2: Celery replaces sys.stderr with a logging proxy that has no file descriptor
    faulthandler.dump_traceback_later(seconds, exit=True, file=2)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
