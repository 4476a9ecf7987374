"""Periodic upkeep run by every worker's main process: the job sweeper (lost messages, dead
workers, time limits) and, for the SQLite broker, deleting delivered messages; and, on its own
slower clock, the image retention policy.

Several workers may sweep at once: the sweep locks rows with SKIP LOCKED on PostgreSQL and
every change is conditional, so the worst case is a duplicate message, which a worker drops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from services.jobs import Enqueue, SweepReport, purge_all, sweep, untouch
from services.queue import purge_delivered
from services.workers import worker_name
from shared.db.outage import short_reason
from shared.settings import Settings

log = logging.getLogger(__name__)


def sweep_once(sm: sessionmaker[Session], settings: Settings, enqueue: Enqueue) -> SweepReport:
    """One sweep in its own transaction; re-enqueues after the commit. ``enqueue`` returns
    False (or raises) when the broker refused the message: that job and the ones not tried
    after it are untouched again, so the next pass tries them, not one grace period later."""
    with sm.begin() as session:
        report = sweep(session, queued_grace_seconds=settings.queued_grace_seconds,
                       hard_time_limit_seconds=settings.hard_time_limit_seconds)
    unsent, reason = _publish(report.requeue_ids, enqueue)
    if unsent:
        with sm.begin() as session:
            untouch(session, report, unsent)
    if not (report.requeue_ids or report.failed_ids):
        return report
    done = f"sweeper: re-enqueued {len(report.requeue_ids) - len(unsent)} job(s), failed {len(report.failed_ids)}"
    if unsent:
        log.warning("%s; %d message(s) could not be published%s, the next pass tries again", done, len(unsent),
                    f" ({reason})" if reason else "")
    else:
        log.info("%s", done)
    return report


def _publish(job_ids: list[str], enqueue: Enqueue) -> tuple[list[str], str | None]:
    """The ids not published, and the error that stopped publishing, if one was raised. The
    first refusal ends the pass's publishing: a broker that refuses one message refuses the
    next alike, and a hung one costs about twice ``FADA_BROKER_TIMEOUT_SECONDS`` a try, so
    trying every stale job would hold the sweeper for minutes. The rest wait for the next pass."""
    for index, job_id in enumerate(job_ids):
        try:
            if enqueue(job_id):
                continue
            reason = None
        except Exception as exc:
            reason = short_reason(exc)
        return job_ids[index:], reason
    return [], None


class Every:
    """Call ``fn`` every ``seconds`` on a daemon thread until ``stop()``; errors are logged,
    never fatal (a database that is down now may be back next time). A run of failures is
    logged once when it starts, then once every ``quiet_seconds`` with its count, and once
    when it ends: a database outage of a minute is a few lines, not one per pass."""

    def __init__(self, seconds: float, fn: Callable[[], object], *, name: str, quiet_seconds: float = 60.0) -> None:
        self._seconds, self._fn, self._quiet = seconds, fn, quiet_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Every:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        name, failures, logged_at = self._thread.name, 0, 0.0
        while not self._stop.wait(self._seconds):
            try:
                self._fn()
            except Exception as exc:
                failures += 1
                now = time.monotonic()
                if failures == 1 or now - logged_at >= self._quiet:
                    again = f" ({failures} passes in a row)" if failures > 1 else ""
                    log.warning("%s failed%s: %s", name, again, short_reason(exc))
                    logged_at = now
            else:
                if failures:
                    log.info("%s works again after %d failed pass(es)", name, failures)
                failures = 0


def purge_old_images(sm: sessionmaker[Session], settings: Settings) -> int:
    """A pass of the retention policy (``FADA_IMAGE_RETENTION_DAYS``): every image due, in
    batches. Returns how many images lost their pixels."""
    if settings.image_retention_days is None:
        return 0
    purged = purge_all(sm, older_than=timedelta(days=settings.image_retention_days), by=worker_name())
    if purged:
        log.info("retention: deleted the pixels of %d image(s) of jobs finished over %g day(s) ago", purged,
                 settings.image_retention_days)
    return purged


def upkeep(sm: sessionmaker[Session], settings: Settings, enqueue: Enqueue) -> None:
    sweep_once(sm, settings, enqueue)
    purged = purge_delivered(settings)
    if purged:
        log.debug("deleted %d delivered broker message(s)", purged)
