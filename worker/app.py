"""The Celery app of the workers: ``celery -A worker.app worker -Q gpu -c 1`` (or ``fada worker``).

One model per pool process, loaded after the fork (``worker_process_init``), never in the
parent; the parent only runs the periodic upkeep (sweeper). Run one worker per GPU.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_process_init, worker_process_shutdown, worker_ready, worker_shutdown

from services.maintenance import Every, upkeep
from services.queue import enqueue_job, make_celery
from shared.db.engine import engine_from_settings, make_sessionmaker
from shared.settings import get_settings

from . import runtime

log = logging.getLogger(__name__)

settings = get_settings()
app = make_celery(settings)

_upkeep: Every | None = None


@worker_process_init.connect
def _load_model_in_child(**_: Any) -> None:
    runtime.start(settings)


@worker_process_shutdown.connect
def _unload_in_child(**_: Any) -> None:
    runtime.stop()


@worker_ready.connect
def _start_upkeep(**_: Any) -> None:
    global _upkeep
    sm = make_sessionmaker(engine_from_settings(settings))
    _upkeep = Every(settings.sweep_interval_seconds, lambda: upkeep(sm, settings, lambda j: enqueue_job(app, j)),
                    name="fada-upkeep").start()
    log.info("upkeep every %.1f s (sweeper, broker purge)", settings.sweep_interval_seconds)


@worker_shutdown.connect
def _stop_upkeep(**_: Any) -> None:
    if _upkeep is not None:
        _upkeep.stop()


from . import tasks  # noqa: E402,F401  (registers the tasks on ``app``)
