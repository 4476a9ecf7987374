"""What a Prometheus scrape of /metrics costs the database, on a database the size of a busy
site's: the figures read at each scrape (``services.monitoring.read_figures``) against the
job counts and live workers alone (what /metrics read before the waiting ages and the
deliveries were added), in the same run on the same rows; then GET /metrics end to end.

The rows: ``--jobs`` jobs, nearly all finished, a few hundred queued, running or awaiting
review; one delivered webhook per finished job, a few pending or failed.

Usage:

    .venv/bin/python bench/metrics_scrape.py [--jobs 200000] [--repeats 30] [--setups postgres,sqlite]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from services.jobs import status_counts
from services.monitoring import read_figures
from services.workers import live_workers
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import upgrade
from shared.db.models import (
    ApiKey,
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    Image,
    ImageFormat,
    Job,
    JobMode,
    JobStatus,
    ReviewState,
    Role,
)
from shared.db.types import new_id, utcnow

CHUNK = 5_000
WAITING = {JobStatus.queued: 300, JobStatus.running: 16, JobStatus.awaiting_review: 200}
HEARTBEAT_WITHIN = 30.0
console = Console()


@contextmanager
def database(setup: str) -> Iterator[str]:
    if setup == "sqlite":
        with tempfile.TemporaryDirectory(prefix="fada-bench-") as folder:
            yield f"sqlite:///{folder}/fada.db"
    else:
        from tests.fixtures_db import throwaway_postgres_database

        with throwaway_postgres_database(prefix="fada_bench_") as url:
            yield url


def fill(sm: sessionmaker[Session], jobs: int) -> None:
    now = utcnow()
    key_id, image_id = new_id(), new_id()
    with sm.begin() as session:
        session.add(ApiKey(id=key_id, name="bench", role=Role.submitter, key_prefix="fada_b", key_hash=new_id()))
        session.add(Image(id=image_id, sha256="0" * 64, format=ImageFormat.png, width=8, height=8, data=b"",
                          original_size_bytes=1))
    statuses = [status for status, n in WAITING.items() for _ in range(n)]
    finished = jobs - len(statuses)
    statuses += [JobStatus.failed if i % 100 == 0 else JobStatus.succeeded for i in range(finished)]
    for start in range(0, jobs, CHUNK):
        job_rows: list[dict[str, Any]] = []
        delivery_rows: list[dict[str, Any]] = []
        for i in range(start, min(start + CHUNK, jobs)):
            status = statuses[i]
            created = now - timedelta(seconds=jobs - i)
            hitl = status is JobStatus.awaiting_review
            job_id = new_id()
            job_rows.append({
                "id": job_id, "status": status, "mode": JobMode.hitl if hitl else JobMode.autonomous,
                "review_state": ReviewState.pending if hitl else ReviewState.not_required, "image_id": image_id,
                "api_key_id": key_id, "created_at": created, "updated_at": created, "waiting_since": created,
                "attempts": 1, "max_attempts": 3})
            if status in (JobStatus.succeeded, JobStatus.failed):
                delivery_status = (DeliveryStatus.pending if i % 5000 == 1 else
                                   DeliveryStatus.failed if i % 5000 == 2 else DeliveryStatus.delivered)
                delivery_rows.append({
                    "id": new_id(), "job_id": job_id, "kind": DeliveryKind.webhook, "event": f"job.{status.value}",
                    "url": "https://ris.example/fada", "payload": {}, "status": delivery_status, "attempts": 1,
                    "next_attempt_at": created, "created_at": created})
        with sm.begin() as session:
            session.execute(insert(Job), job_rows)
            if delivery_rows:
                session.execute(insert(Delivery), delivery_rows)


def timed_ms(sm: sessionmaker[Session], read: Callable[[Session], object], repeats: int) -> float:
    """Median wall time of one read in its own session, as a scrape has."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with sm() as session:
            read(session)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def before(session: Session) -> object:
    return status_counts(session), len(live_workers(session, within_seconds=HEARTBEAT_WITHIN))


def now_(session: Session) -> object:
    return read_figures(session, heartbeat_within_seconds=HEARTBEAT_WITHIN)


def scrape_ms(url: str, data_dir: Path, repeats: int) -> float:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from shared.settings import Settings

    settings = Settings(database_url=url, data_dir=data_dir, broker_url=f"sqla+sqlite:///{data_dir}/broker.db")
    times = []
    with TestClient(create_app(settings)) as client:
        for _ in range(repeats):
            start = time.perf_counter()
            assert client.get("/metrics").status_code == 200
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--setups", default="postgres,sqlite")
    args = parser.parse_args(argv)
    table = Table(title=f"/metrics figures on {args.jobs} jobs (median of {args.repeats})")
    for column in ("database", "fill s", "before: counts + workers ms", "now: read_figures ms", "ratio",
                   "GET /metrics ms"):
        table.add_column(column, justify="right")
    for setup in args.setups.split(","):
        with database(setup) as url, tempfile.TemporaryDirectory(prefix="fada-bench-data-") as data_dir:
            upgrade(url)
            engine = make_engine(url)
            sm = make_sessionmaker(engine)
            start = time.perf_counter()
            fill(sm, args.jobs)
            filled = time.perf_counter() - start
            if setup == "postgres":
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql("VACUUM ANALYZE")  # as autovacuum would have by then
            base = timed_ms(sm, before, args.repeats)
            new = timed_ms(sm, now_, args.repeats)
            with sm() as session:
                figures = read_figures(session, heartbeat_within_seconds=HEARTBEAT_WITHIN)
            assert sum(figures.jobs.values()) == args.jobs, figures.jobs
            whole = scrape_ms(url, Path(data_dir), args.repeats)
            engine.dispose()
        table.add_row(setup, f"{filled:.1f}", f"{base:.2f}", f"{new:.2f}", f"{new / base:.2f}", f"{whole:.2f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
