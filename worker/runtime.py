"""The per-process state of a pool process: its database sessions, its model, its name and
its heartbeat. Created once after the fork, used by every task the process runs."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from services.maintenance import Every
from services.runtime import Runtime, load_runtime
from services.workers import beat, forget, worker_name
from shared.db.engine import engine_from_settings, make_sessionmaker
from shared.db.outage import short_reason
from shared.settings import Settings

log = logging.getLogger(__name__)

QUEUES = "gpu"


@dataclass
class ProcessState:
    sm: sessionmaker[Session]
    runtime: Runtime
    owner: str  # lease owner and heartbeat id
    settings: Settings
    heartbeat: Every


_state: ProcessState | None = None


def start(settings: Settings) -> ProcessState:
    """Load the model and begin beating. Called in the pool process, after the fork."""
    global _state
    sm = make_sessionmaker(engine_from_settings(settings))
    rt = load_runtime(settings)
    owner = f"{worker_name(QUEUES)}:{secrets.token_hex(3)}"
    provenance = rt.pipeline.provenance

    def _beat() -> None:
        with sm.begin() as session:
            beat(session, owner, provenance=provenance, queues=QUEUES)

    try:
        _beat()
    except Exception as exc:  # e.g. the database restarting: the heartbeat thread beats once it is back
        log.warning("first heartbeat of %s failed (%s); the model is loaded, the heartbeat goes on trying", owner,
                    short_reason(exc))
    heartbeat = Every(settings.worker_heartbeat_seconds, _beat, name="fada-heartbeat").start()
    _state = ProcessState(sm=sm, runtime=rt, owner=owner, settings=settings, heartbeat=heartbeat)
    log.info("model loaded in %s: %s (revision %s, untrained=%s); batches of up to %d job(s), linger %.2f s", owner,
             provenance.base, provenance.revision, provenance.untrained, settings.batch_size,
             settings.batch_linger_seconds)
    return _state


def current(settings: Settings) -> ProcessState:
    """This process's state; started now if its start after the fork failed (a model volume
    mounted late, a GPU still held by a process that was going away), or never ran (a solo
    pool has no worker_process_init). A start that fails again raises: the task fails, and
    the sweeper re-enqueues the job."""
    return _state if _state is not None else start(settings)


def stop() -> None:
    global _state
    if _state is None:
        return
    _state.heartbeat.stop()
    try:
        with _state.sm.begin() as session:
            forget(session, _state.owner)
    except Exception as exc:
        log.warning("could not remove heartbeat of %s: %s", _state.owner, exc)
    _state = None
