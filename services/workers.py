"""Worker heartbeats: each worker process with a loaded model says so every few seconds;
readiness asks whether any has spoken recently."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Protocol

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.db.clock import db_now
from shared.db.models import WorkerHeartbeat


def worker_name(queues: str = "gpu") -> str:
    """A name unique to this process; used as lease owner and heartbeat id."""
    return f"{socket.gethostname()}:{os.getpid()}:{queues}"


class ModelIdentity(Protocol):
    """What a heartbeat says about the loaded model (``services.models.loader.Provenance``
    fits; not imported here, so the gateway never loads torch)."""

    base: str
    revision: str
    untrained: bool


def beat(session: Session, name: str, *, provenance: ModelIdentity, queues: str) -> None:
    """Insert or refresh this worker's heartbeat."""
    now = db_now(session)
    changed = session.execute(
        update(WorkerHeartbeat).where(WorkerHeartbeat.id == name).values(heartbeat_at=now).returning(WorkerHeartbeat.id)
    ).first()
    if changed is None:
        session.add(WorkerHeartbeat(
            id=name, hostname=socket.gethostname(), pid=os.getpid(), queues=queues, model_base=provenance.base,
            model_revision=provenance.revision, untrained=provenance.untrained, started_at=now, heartbeat_at=now))


def forget(session: Session, name: str) -> None:
    session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.id == name))


def live_workers(session: Session, *, within_seconds: float) -> list[WorkerHeartbeat]:
    since = db_now(session) - timedelta(seconds=within_seconds)
    return list(session.scalars(
        select(WorkerHeartbeat).where(WorkerHeartbeat.heartbeat_at >= since).order_by(WorkerHeartbeat.id)))
