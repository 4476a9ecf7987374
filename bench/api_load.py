"""Gateway load and queue cost: POST /v1/jobs against a bare FastAPI upload, and per-job queue overhead.

For each setup ("embedded": SQLite + the SQLite broker; "postgres": a throwaway PostgreSQL
database + Redis) this starts a real ``uvicorn --factory api.app:create_app`` subprocess (one
process) on a migrated database with a submitter key, and measures:

1. ``POST /v1/jobs`` with a ~200 KB PNG at a fixed concurrency (httpx.AsyncClient), next to a
   bare FastAPI ``POST /upload`` (UploadFile, read, 202) served the same way, in the same run;
2. the queue's own cost per job: jobs submitted one at a time to a gateway with a real Celery
   worker on the tiny model; wall time from submit to ``succeeded`` minus the pipeline's own
   time (sum of ``phases[*].latency_ms`` in the result).

Usage:

    .venv/bin/python bench/api_load.py [--requests N] [--concurrency 32] [--setups embedded,postgres]
                                       [--queue-jobs M]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from _servers import HOST, REPO_ROOT, ProcessGroup, child_env, free_port, uvicorn_argv, wait_for
from fastapi import FastAPI, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image
from rich.console import Console
from rich.table import Table

REDIS_URL = "redis://127.0.0.1:6379/7"  # a db of its own: only this one is flushed
SETUPS = ("embedded", "postgres")
PNG_TARGET_BYTES = 200_000
# The pipeline's time is subtracted from the queue figures; small budgets and a 64 px image keep
# a tiny-model job near 0.1 s on a CPU, so the run stays short (the gateway does not use them).
BENCH_BUDGETS = {"interpret": 48, "classify": 32, "detect": 48, "keypoints": 48, "segment": 64}
POLL_SECONDS = 0.02

console = Console(width=max(Console().width, 150))


# ---------------------------------------------------------------- the bare baseline app


def create_bare_app() -> FastAPI:
    """What any FastAPI upload costs: multipart parsing, reading the bytes, a small JSON 202.
    A sync route, like the gateway's ``submit``, so both pay the same thread-pool hop."""
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/upload", status_code=202)
    def upload(file: UploadFile) -> JSONResponse:
        data = file.file.read()
        return JSONResponse({"id": "bare", "bytes": len(data), "status": "queued"}, status_code=202)

    return app


# ---------------------------------------------------------------- inputs


def noisy_png(target: int = PNG_TARGET_BYTES) -> tuple[bytes, int, int]:
    """A 4:3 gradient-plus-speckle RGB PNG (ultrasound-like) whose size is close to ``target``."""

    def encode(width: int) -> bytes:
        height = width * 3 // 4
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:height, 0:width]
        base = ((xx + yy) % 256).astype(np.uint8)
        pixels = np.clip(base[..., None] + rng.normal(0, 20, (height, width, 1)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(np.repeat(pixels, 3, axis=2)).save(buffer, format="PNG")
        return buffer.getvalue()

    low, high = 64, 2048
    while high - low > 1:  # size grows with width: the smallest width at or above the target
        mid = (low + high) // 2
        low, high = (mid, high) if len(encode(mid)) < target else (low, mid)
    return encode(high), high, high * 3 // 4


def multipart_body(png: bytes) -> tuple[bytes, str]:
    """The upload encoded once (body, Content-Type), so the client only sends bytes."""
    request = httpx.Request("POST", "http://bench/", files={"file": ("bench.png", png, "image/png")})
    return request.read(), request.headers["Content-Type"]


def write_bench_profile(folder: Path) -> Path:
    from services.pipeline.profile import PROFILES_DIR

    data = json.loads((PROFILES_DIR / "fada-skd.json").read_text())
    data["name"], data["max_new_tokens"] = "fada-skd-bench", BENCH_BUDGETS
    data["image"]["max_side"] = 64
    data["interpretation_fields"] = data["interpretation_fields"][:1]
    data["limits"].update(max_field_chars=16, max_items=1, max_polygon_points=3, max_keypoints=1)
    path = folder / "bench-profile.json"
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------- setups


@dataclass(frozen=True)
class Environment:
    """A migrated database with a submitter key, and the FADA_* variables that point at it."""

    setup: str
    database_url: str
    env: dict[str, str]
    secret: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc); 0 where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()


def prepare(setup: str, data_dir: Path, database_url: str, broker_url: str, extra: dict[str, str]) -> Environment:
    from services.keys import create_key
    from shared.db.engine import make_engine, make_sessionmaker
    from shared.db.migrate import upgrade

    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine).begin() as session:
            secret = create_key(session, name="api-load-bench", role="submitter").secret
    finally:
        engine.dispose()
    env = {"FADA_DATA_DIR": str(data_dir), "FADA_DATABASE_URL": database_url, "FADA_BROKER_URL": broker_url, **extra}
    return Environment(setup, database_url, env, secret)


@contextmanager
def environment(setup: str, data_dir: Path, extra: dict[str, str]) -> Iterator[Environment]:
    """A fresh database (and broker) for ``setup``; dropped or flushed afterwards."""
    data_dir.mkdir(parents=True)
    if setup == "embedded":
        yield prepare(setup, data_dir, f"sqlite:///{data_dir}/fada.db", f"sqla+sqlite:///{data_dir}/broker.db", extra)
        return
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures_db import throwaway_postgres_database

    flush_redis()
    try:
        with throwaway_postgres_database(prefix="fada_bench_") as url:
            yield prepare(setup, data_dir, url, REDIS_URL, extra)
    finally:
        flush_redis()


# ---------------------------------------------------------------- load


@dataclass
class LoadResult:
    label: str
    setup: str
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    ok: int = 0
    errors: int = 0
    first_error: str | None = None
    client_cpu: float = 0.0  # this process's CPU seconds / wall seconds while measuring
    server_cpu: float = 0.0  # the uvicorn process's, the same way

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def server_ms_per_request(self) -> float:
        """Server CPU time per completed request: what the app costs, whoever is the bottleneck."""
        return self.server_cpu * self.seconds / len(self.latencies) * 1000 if self.latencies else 0.0

    def percentile_ms(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000

    def record(self, latency: float, status: int | None, text: str) -> None:
        self.latencies.append(latency)
        if status == 202:
            self.ok += 1
            return
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{status if status is not None else 'no response'}: {text[:500]}"


async def _fire(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], requests: int,
                concurrency: int, result: LoadResult, server_pid: int) -> None:
    numbers = iter(range(requests))  # shared by the tasks: next() never awaits, so no request is sent twice

    async def one_connection() -> None:
        for _ in numbers:
            started = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
                result.record(time.perf_counter() - started, response.status_code, response.text)
            except httpx.HTTPError as exc:
                result.record(time.perf_counter() - started, None, f"{type(exc).__name__}: {exc}")

    started, client_cpu, server_cpu = time.perf_counter(), time.process_time(), cpu_seconds(server_pid)
    await asyncio.gather(*(one_connection() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    result.client_cpu = (time.process_time() - client_cpu) / result.seconds
    result.server_cpu = (cpu_seconds(server_pid) - server_cpu) / result.seconds


async def run_load(label: str, setup: str, url: str, body: bytes, headers: dict[str, str], *, server_pid: int,
                   requests: int, concurrency: int, warmup: int) -> LoadResult:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        await _fire(client, url, body, headers, warmup, concurrency, LoadResult(label, setup), server_pid)
        result = LoadResult(label, setup)
        await _fire(client, url, body, headers, requests, concurrency, result, server_pid)
    return result


def load_bare(root: Path, upload: tuple[bytes, str], args: argparse.Namespace) -> LoadResult:
    port = free_port()
    with ProcessGroup(root) as procs:
        proc = procs.start("bare-uvicorn", uvicorn_argv("api_load:create_bare_app", port, app_dir="bench"),
                           child_env({}))
        wait_for(f"http://{HOST}:{port}/healthz", procs, [proc], timeout=60)
        body, content_type = upload
        return asyncio.run(run_load("bare FastAPI POST /upload", "-", f"http://{HOST}:{port}/upload", body,
                                    {"Content-Type": content_type}, server_pid=proc.pid, requests=args.requests,
                                    concurrency=args.concurrency, warmup=args.warmup))


def load_gateway(setup: str, root: Path, upload: tuple[bytes, str], extra: dict[str, str],
                 args: argparse.Namespace) -> LoadResult:
    """The gateway alone (no worker, so the queue fills up and no model competes for the CPU)."""
    port = free_port()
    with environment(setup, root / f"{setup}-load", extra) as env, ProcessGroup(root) as procs:
        proc = procs.start(f"{setup}-load-uvicorn", uvicorn_argv("api.app:create_app", port), child_env(env.env))
        wait_for(f"http://{HOST}:{port}/healthz", procs, [proc], timeout=120)
        body, content_type = upload
        return asyncio.run(run_load("gateway POST /v1/jobs", setup, f"http://{HOST}:{port}/v1/jobs", body,
                                    {"Content-Type": content_type, **env.auth}, server_pid=proc.pid,
                                    requests=args.requests,
                                    concurrency=args.concurrency, warmup=args.warmup))


# ---------------------------------------------------------------- queue cost


@dataclass(frozen=True)
class JobTiming:
    wall_ms: float  # client: POST sent -> GET answered "succeeded"
    phases_ms: float  # the pipeline's own time: sum of phases[*].latency_ms
    wait_ms: float = 0.0  # database: created_at -> started_at (broker delivery + claim)
    worker_extra_ms: float = 0.0  # database: started_at -> finished_at, less the phases

    @property
    def overhead_ms(self) -> float:
        return self.wall_ms - self.phases_ms

    @property
    def client_ms(self) -> float:
        """What is left: the POST before the row exists, and noticing the finish (polling)."""
        return self.overhead_ms - self.wait_ms - self.worker_extra_ms


@dataclass
class QueueResult:
    setup: str
    timings: list[JobTiming]

    def p50(self, name: str) -> float:
        return statistics.median(getattr(t, name) for t in self.timings)

    def mean(self, name: str) -> float:
        return statistics.fmean(getattr(t, name) for t in self.timings)


def run_one_job(client: httpx.Client, body: bytes, headers: dict[str, str], *, timeout: float = 120) -> tuple[
        str, JobTiming]:
    started = time.perf_counter()
    response = client.post("/v1/jobs", content=body, headers=headers)
    if response.status_code != 202:
        raise RuntimeError(f"submit answered {response.status_code}: {response.text[:500]}")
    job_id = response.json()["id"]
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "succeeded":
            wall = time.perf_counter() - started
            break
        if job["status"] in ("failed", "canceled", "awaiting_review"):
            raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}")
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
        time.sleep(POLL_SECONDS)
    phases = client.get(f"/v1/jobs/{job_id}/result").json()["phases"]
    return job_id, JobTiming(wall * 1000, sum(p.get("latency_ms") or 0.0 for p in phases.values()))


def with_db_times(database_url: str, timed: dict[str, JobTiming]) -> list[JobTiming]:
    """Split each job's overhead with the timestamps the gateway and worker wrote."""
    from sqlalchemy import select

    from shared.db.engine import make_engine
    from shared.db.models import Job

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Job.id, Job.created_at, Job.started_at, Job.finished_at)
                                .where(Job.id.in_(list(timed)))).all()
    finally:
        engine.dispose()
    out = []
    for job_id, created, started, finished in rows:
        t = timed[job_id]
        if started is None or finished is None:
            raise RuntimeError(f"job {job_id} succeeded without started_at/finished_at")
        run_ms = (finished - started).total_seconds() * 1000
        out.append(JobTiming(t.wall_ms, t.phases_ms, wait_ms=(started - created).total_seconds() * 1000,
                             worker_extra_ms=run_ms - t.phases_ms))
    return out


def queue_cost(setup: str, root: Path, upload: tuple[bytes, str], extra: dict[str, str],
               args: argparse.Namespace) -> QueueResult:
    from cli.processes import worker_argv

    port = free_port()
    with environment(setup, root / f"{setup}-queue", extra) as env, ProcessGroup(root) as procs:
        # worker_argv is exactly what cli.processes.start_worker runs; started here so its log goes to a file.
        worker = procs.start(f"{setup}-worker", worker_argv(loglevel="WARNING"), child_env(env.env))
        api = procs.start(f"{setup}-queue-uvicorn", uvicorn_argv("api.app:create_app", port), child_env(env.env))
        waited = wait_for(f"http://{HOST}:{port}/readyz", procs, [worker, api], timeout=180)
        console.print(f"  {setup}: /readyz 200 after {waited:.1f} s (worker loaded the model)")
        body, content_type = upload
        headers = {"Content-Type": content_type, **env.auth}
        timed: dict[str, JobTiming] = {}
        with httpx.Client(base_url=f"http://{HOST}:{port}", headers=env.auth, timeout=60) as client:
            for _ in range(args.queue_warmup):
                run_one_job(client, body, headers)
            for _ in range(args.queue_jobs):
                job_id, timing = run_one_job(client, body, headers)
                timed[job_id] = timing
        return QueueResult(setup, with_db_times(env.database_url, timed))


# ---------------------------------------------------------------- report


def load_table(bare: LoadResult, gateways: list[LoadResult], concurrency: int) -> Table:
    table = Table(title=f"Uploads at concurrency {concurrency} (1 uvicorn process each; ok/s counts 202s only)")
    for name, justify in (("server", "left"), ("setup", "left"), ("requests", "right"), ("ok/s", "right"),
                          ("p50 ms", "right"), ("p99 ms", "right"), ("errors", "right"), ("client CPU", "right"),
                          ("server CPU", "right"), ("server CPU ms/req", "right"), ("gateway / bare", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for result in [bare, *gateways]:
        ratio = "-" if result is bare else f"{result.rate / bare.rate:.2f}" if bare.rate else "n/a"
        table.add_row(result.label, result.setup, str(len(result.latencies)), f"{result.rate:.1f}",
                      f"{result.percentile_ms(50):.1f}", f"{result.percentile_ms(99):.1f}", str(result.errors),
                      f"{result.client_cpu:.0%}", f"{result.server_cpu:.0%}", f"{result.server_ms_per_request:.1f}",
                      ratio)
    return table


def queue_table(results: list[QueueResult]) -> Table:
    table = Table(title="Queue cost per job (sequential jobs, real worker, tiny model; ms)")
    table.add_column("setup")
    table.add_column("jobs", justify="right")
    columns = [("submit->succeeded p50", "wall_ms", "p50"), ("pipeline Σphases p50", "phases_ms", "p50"),
               ("overhead p50", "overhead_ms", "p50"), ("overhead mean", "overhead_ms", "mean"),
               ("created->started p50", "wait_ms", "p50"), ("in worker, not phases p50", "worker_extra_ms", "p50"),
               ("client side p50", "client_ms", "p50")]
    for title, _, _ in columns:
        table.add_column(title, justify="right")
    for result in results:
        cells = [f"{getattr(result, how)(name):.1f}" for _, name, how in columns]
        table.add_row(result.setup, str(len(result.timings)), *cells)
    return table


def print_errors(results: list[LoadResult]) -> None:
    for result in results:
        if result.first_error:
            console.print(f"[red]first error, {result.label} ({result.setup}):[/red] {result.first_error}")


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="measured uploads per server (after warm-up)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=64, help="uploads before each measurement")
    parser.add_argument("--setups", default=",".join(SETUPS), help="comma-separated: embedded, postgres")
    parser.add_argument("--queue-jobs", type=int, default=20, help="sequential jobs per setup (0: skip)")
    parser.add_argument("--queue-warmup", type=int, default=3, help="jobs before the measured ones")
    args = parser.parse_args()
    args.setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = set(args.setups) - set(SETUPS)
    if unknown:
        parser.error(f"unknown setups {sorted(unknown)}; choose from {', '.join(SETUPS)}")
    return args


def quiet_model_build(root: Path) -> dict[str, str]:
    """cli.processes.ensure_model with the transformers warnings and progress bars silenced."""
    import warnings

    from transformers.utils import logging as hf_logging

    from cli.processes import ensure_model
    from shared.settings import Settings

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ensure_model(Settings(data_dir=root))


def run(args: argparse.Namespace, root: Path) -> tuple[LoadResult, list[LoadResult], list[QueueResult]]:
    png, width, height = noisy_png()
    body, content_type = multipart_body(png)
    console.print(f"PNG: {len(png):,} bytes, {width}x{height} RGB (gradient + speckle); multipart body "
                  f"{len(body):,} bytes")
    console.print(f"servers: 1 uvicorn process each (this machine has {os.cpu_count()} cores; the client, the "
                  "server, and the database share them), no access log, concurrency "
                  f"{args.concurrency}, {args.warmup} warm-up uploads, then {args.requests} measured")
    extra = {"FADA_PROFILE": str(write_bench_profile(root))}
    if args.queue_jobs:
        extra.update(quiet_model_build(root))
    bare = load_bare(root, (body, content_type), args)
    console.print(f"  bare: {bare.rate:.1f} uploads/s")
    gateways: list[LoadResult] = []
    queues: list[QueueResult] = []
    for setup in args.setups:
        gateways.append(load_gateway(setup, root, (body, content_type), extra, args))
        console.print(f"  {setup}: gateway: {gateways[-1].rate:.1f} submissions/s, {gateways[-1].errors} errors")
        if args.queue_jobs:
            queues.append(queue_cost(setup, root, (body, content_type), extra, args))
            console.print(f"  {setup}: queue overhead p50 {queues[-1].p50('overhead_ms'):.1f} ms")
    return bare, gateways, queues


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fada-api-load-") as tmp:
        bare, gateways, queues = run(args, Path(tmp))
    console.print(load_table(bare, gateways, args.concurrency))
    print_errors([bare, *gateways])
    for result in gateways:
        console.print(f"gateway / bare ({result.setup}): {result.rate / bare.rate:.2f} (aim: >= 0.5); server CPU per "
                      f"request {result.server_ms_per_request / bare.server_ms_per_request:.0f}x the bare app's")
    console.print("CPU columns: share of one core while measuring (over 100 %: more than one thread busy). A client "
                  "near 100 % means the client, not the server, set the rate.")
    if queues:
        console.print(queue_table(queues))
        console.print(f"overhead = submit->succeeded - Σphases; it includes the worker loading the image and "
                      f"encoding it for the model, writing the result, and up to {POLL_SECONDS * 1000:.0f} ms "
                      "of polling lag.")
    console.print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
