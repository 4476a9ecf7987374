"""Operations: liveness, readiness, Prometheus metrics. No key needed."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from services.monitoring import read_figures
from services.queue import broker_reachable
from services.workers import live_workers
from shared.db.outage import database_unavailable
from shared.db.space import database_free_bytes

from ..deps import Ctx
from ..metrics import render
from ..problems import problem_response
from ..schemas import Health, Readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is up. Async on purpose: it needs no worker thread, so it answers even when
    every thread waits on a hung database or broker."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"content": {"application/problem+json": {}}}})
def readyz(ctx: Ctx) -> Readiness | JSONResponse:
    """Ready when the database and the broker answer, a SQLite database's disk has room, and a
    worker with a loaded model has sent a heartbeat recently; otherwise 503 naming what failed."""
    checks: dict[str, str] = {}
    failing: list[str] = []
    workers = []
    try:
        with ctx.sm() as session:
            session.execute(text("SELECT 1"))
            workers = live_workers(session, within_seconds=3 * ctx.settings.worker_heartbeat_seconds)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
        failing.append("database")
    reason = broker_reachable(ctx.celery)
    checks["broker"] = "ok" if reason is None else f"unreachable: {reason}"
    if reason is not None:
        failing.append("broker")
    free = database_free_bytes(ctx.settings.database_url)
    if free is not None:
        # Reads go on working on a full disk, and only submissions fail (database_full): say
        # so before, while there is still room for two of the largest requests.
        checks["disk"] = f"{free / 2**30:.2f} GiB free for the database"
        if free < 2 * ctx.settings.max_body_bytes:
            checks["disk"] += f", under twice FADA_MAX_BODY_BYTES ({2 * ctx.settings.max_body_bytes} bytes)"
            failing.append("disk")
    if workers:
        revisions = sorted({w.model_revision for w in workers})
        checks["workers"] = f"{len(workers)} live, model revision {', '.join(revisions)}"
    elif "database" not in failing:
        checks["workers"] = "no worker with a loaded model has sent a heartbeat recently"
        failing.append("workers")
    if failing:
        return problem_response(503, "not_ready", f"not ready: {', '.join(failing)}", checks=checks)
    return Readiness(status="ready", checks=checks)


@router.get("/metrics", response_class=Response)
def metrics(ctx: Ctx) -> Response:
    """Prometheus text format: HTTP metrics of this process, the figures of the work
    (``services.monitoring``: jobs per status, the oldest waiting, stuck messages and
    deliveries, live workers), and whether the database answered. Without the database the
    process's own metrics still come, with ``fada_database_up 0``: an outage is when they
    matter most."""
    try:
        with ctx.sm() as session:
            figures = read_figures(session, heartbeat_within_seconds=3 * ctx.settings.worker_heartbeat_seconds)
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        return Response(render(None), media_type=CONTENT_TYPE_LATEST)
    return Response(render(figures), media_type=CONTENT_TYPE_LATEST)
