"""The Celery app of the workers: ``celery -A worker.app worker -Q gpu -c 1`` (or ``fada worker``).

One model per pool process, loaded after the fork (``worker_process_init``), never in the
parent; the parent only runs the periodic upkeep (sweeper) and sends notifications
(webhooks, SR pushes). Run one worker per GPU.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from celery.signals import setup_logging, worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown

from services.maintenance import Every, purge_old_images, upkeep
from services.notify import dispatch_once
from services.queue import enqueue_job, make_celery
from services.runtime import quiet_library_logs
from services.workers import worker_name
from shared.db.engine import engine_from_settings, make_sessionmaker
from shared.logs import configure_logging
from shared.settings import get_settings

from . import runtime

log = logging.getLogger(__name__)

settings = get_settings()
app = make_celery(settings)
quiet_library_logs()  # before the fork: the pool processes inherit it

_periodic: list[Every] = []


@setup_logging.connect
def _log_as_the_gateway(loglevel: int | str | None = None, **_: Any) -> None:
    """Celery leaves logging to a receiver of this signal: the lines then have the gateway's
    format (FADA_LOG_FORMAT), at the worker's ``--loglevel``."""
    configure_logging(settings.log_format, logging.getLevelName(loglevel) if isinstance(loglevel, int)
                      else loglevel or settings.log_level)


@worker_process_init.connect
def _load_model_in_child(**_: Any) -> None:
    try:
        runtime.start(settings)
    except Exception:  # Celery would swallow it; the first task tries again (runtime.current)
        log.exception("the pool process could not load the model; its first task will try again")


@worker_process_shutdown.connect
def _unload_in_child(**_: Any) -> None:
    runtime.stop()


@worker_ready.connect
def _start_upkeep(**_: Any) -> None:
    sm = make_sessionmaker(engine_from_settings(settings))
    owner = f"{worker_name('notify')}:{secrets.token_hex(3)}"
    _periodic.extend([
        Every(settings.sweep_interval_seconds, lambda: upkeep(sm, settings, lambda j: enqueue_job(app, j)),
              name="fada-upkeep").start(),
        Every(settings.notify_interval_seconds, lambda: dispatch_once(sm, settings, owner=owner),
              name="fada-notify").start(),
    ])
    log.info("upkeep every %.1f s (sweeper, broker purge), notifications every %.1f s",
             settings.sweep_interval_seconds, settings.notify_interval_seconds)
    if settings.image_retention_days is not None:
        _periodic.append(Every(settings.retention_interval_seconds, lambda: purge_old_images(sm, settings),
                               name="fada-retention").start())
        log.info("image retention: pixels of jobs finished over %g day(s) ago deleted every %.0f s",
                 settings.image_retention_days, settings.retention_interval_seconds)


@worker_shutdown.connect
def _stop_upkeep(**_: Any) -> None:
    while _periodic:
        _periodic.pop().stop()


from . import tasks  # noqa: E402,F401  (registers the tasks on ``app``)
