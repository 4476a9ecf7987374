"""The message queue: a Celery app configured from settings, and enqueueing a job id.

The broker only wakes workers up; the database is the truth. A message carries one job id,
nothing else. A message that is lost (broker restart, failed publish) is recovered by the
sweeper, which re-enqueues queued jobs nobody took (``services.jobs.sweep``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery
from kombu import Queue
from sqlalchemy import create_engine, text

from shared.settings import Settings

log = logging.getLogger(__name__)

TASK_RUN_JOB = "fada.run_job"
GPU_QUEUE = "gpu"  # model work; CPU-only helpers can take other queues later
SQLA_PREFIX = "sqla+"


def is_embedded_broker(url: str) -> bool:
    return url.startswith(SQLA_PREFIX)


def make_celery(settings: Settings, *, name: str = "fada") -> Celery:
    """The Celery app of both the gateway (sends) and the worker (consumes)."""
    if is_embedded_broker(settings.broker_url):
        # kombu hands every broker_transport_option of this transport to create_engine(), so the
        # polling interval can only be set on the class (see README, "Brokers").
        from kombu.transport import sqlalchemy as sqla_transport

        sqla_transport.Transport.polling_interval = settings.broker_polling_interval
    app = Celery(name, broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        # A job's message is acknowledged only after the task returns, and given back when the
        # process running it dies; one message at a time per process.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(GPU_QUEUE)],
        task_default_queue=GPU_QUEUE,
        task_routes={TASK_RUN_JOB: {"queue": GPU_QUEUE}},
        broker_connection_retry_on_startup=True,
        # A worker never gives up on the broker: Celery's default (100 tries, about 46 minutes
        # of kombu's back-off) ended every worker at once after a long Redis outage, and each
        # came back only through its supervisor, reloading its model. The broker being away
        # is /readyz's to report; the worker waits and reconnects within 30 s of its return.
        broker_connection_max_retries=None,
        broker_connection_timeout=settings.broker_timeout_seconds,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # Loading a real model in a fresh pool process takes minutes, not the default 4 s.
        worker_proc_alive_timeout=900,
        # No Celery time limit: the worker's parent judges it, and while it reconnects to the
        # broker it reads no results, so after an outage longer than the limit it killed pool
        # processes whose job had finished (a model reload). The pool process stops itself
        # instead (worker.tasks.process_time_limit, process_limit_seconds).
        # Redis: a message is handed out again only after this long unacknowledged. It must
        # exceed the longest job (or a running job is delivered twice); a dead worker's jobs
        # come back sooner through the lease sweeper, not through this.
        broker_transport_options=_transport_options(settings),
    )
    return app


def process_limit_seconds(settings: Settings) -> int:
    """How long one task may hold a pool process: the job's hard limit (past which the sweeper
    fails the job) plus a minute to settle."""
    return int(settings.hard_time_limit_seconds) + 60


def _transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Without socket timeouts a Redis that hangs (stopped, not down; a dropped connection)
        # blocks every publish and health check for as long as it hangs: the gateway's threads
        # run out and even /healthz stops answering. Reads stay far longer than the consumer's
        # 1 s BRPOP poll, so an idle worker never times out.
        return {"visibility_timeout": process_limit_seconds(settings),
                "socket_timeout": settings.broker_timeout_seconds,
                "socket_connect_timeout": settings.broker_timeout_seconds,
                "socket_keepalive": True}
    return {}


def enqueue_job(app: Celery, job_id: str) -> bool:
    """Publish the job id to the gpu queue. False when the broker cannot be reached: the job
    is committed as queued already and the sweeper enqueues it later. One retry: with the
    broker's timeouts, a hung broker costs the caller about twice ``broker_timeout_seconds``."""
    try:
        app.send_task(
            TASK_RUN_JOB,
            args=[job_id],
            queue=GPU_QUEUE,
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5},
            # Where the task is registered (a worker re-enqueuing, the sweeper), Celery would put
            # this process's time limit in the message, and it would bind whichever worker takes
            # it: each worker applies its own configured limit instead.
            time_limit=None,
            soft_time_limit=None,
        )
    except Exception as exc:  # any broker failure: the sweeper's grace period covers it
        log.warning("could not enqueue job %s (the sweeper will): %s", job_id, exc)
        return False
    return True


def publisher(app: Celery) -> Callable[[str], bool]:
    """``enqueue_job`` for the jobs of one request (a batch, a STOW-RS push), which stops at the
    first refusal: a broker that refuses one message refuses the next alike, and a hung one
    costs each try about twice ``broker_timeout_seconds``, so a batch of 50 would hold its
    caller for minutes. The jobs not published are committed as queued: the sweeper sends them."""
    refused = False

    def publish(job_id: str) -> bool:
        nonlocal refused
        if not refused:
            refused = not enqueue_job(app, job_id)
        return not refused

    return publish


def broker_reachable(app: Celery, *, timeout: float = 2.0) -> str | None:
    """None when the broker answers, else the reason."""
    if is_embedded_broker(app.conf.broker_url or ""):
        return _sqlite_broker_reachable(app.conf.broker_url)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _sqlite_broker_reachable(url: str) -> str | None:
    # kombu connects lazily: a broker file that cannot be opened shows up only at publish time
    engine = create_engine(url.removeprefix(SQLA_PREFIX))
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        engine.dispose()
    return None


def purge_delivered(settings: Settings) -> int:
    """Delete delivered messages from the SQLite broker's table (kombu keeps them forever).
    Returns how many were deleted; 0 for other brokers."""
    if not is_embedded_broker(settings.broker_url):
        return 0
    engine = create_engine(settings.broker_url.removeprefix(SQLA_PREFIX))
    try:
        with engine.begin() as conn:
            has_table = conn.execute(
                text("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='kombu_message'")
            ).scalar()
            if not has_table:
                return 0
            return conn.execute(text("DELETE FROM kombu_message WHERE visible = 0")).rowcount or 0
    finally:
        engine.dispose()
