"""Starting the service's processes: the gateway (uvicorn), a worker (celery), or both."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from shared.logs import log_config
from shared.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own switch to multiprocess mode


def worker_argv(*, concurrency: int = 1, loglevel: str = "INFO", name: str | None = None,
                quiet: bool = False) -> list[str]:
    """``celery worker`` for the gpu queue: one pool process per GPU (concurrency 1), each
    loading its own model after the fork. Gossip and mingle are off: they need broadcast,
    which the SQLite broker lacks, and this design does not use them. The node name carries
    this process's id (``fada worker`` execs Celery, so it is the worker's own): two workers on
    one host, one per GPU, get names Celery's inspect and control commands can tell apart.
    ``quiet`` leaves out Celery's start-up banner (JSON logs: every line must be an object)."""
    name = name or f"fada-gpu-{os.getpid()}@%h"
    return [sys.executable, "-m", "celery", "-A", "worker.app", *(["--quiet"] if quiet else []), "worker",
            "-Q", "gpu", "-c", str(concurrency),
            "-P", "prefork", "-l", loglevel, "-n", name, "--without-gossip", "--without-mingle"]


def ensure_model(settings: Settings) -> dict[str, str]:
    """Environment overrides that give a worker a model: none when one is configured;
    otherwise the tiny local model under the data folder, built on first use."""
    if settings.model_dir is not None or settings.model_base:
        return {}
    tiny = Path(settings.data_dir) / "models" / "tiny"
    if not (tiny / "fada_model.json").exists():
        from services.models.tiny import build_tiny_model

        print(f"no model configured: building the tiny untrained model in {tiny} (seconds)", file=sys.stderr)
        build_tiny_model(tiny, seed=0)
    return {"FADA_MODEL_DIR": str(tiny.resolve())}


def start_worker(env_overrides: dict[str, str], **kwargs: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, **env_overrides}
    return subprocess.Popen(worker_argv(**kwargs), env=env)  # type: ignore[arg-type]


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 20) -> None:
    """Warm shutdown (the running job finishes or goes back to the queue), then kill."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def watch_worker(proc: subprocess.Popen[bytes]) -> tuple[threading.Event, threading.Event]:
    """Stop this process (SIGTERM to itself: the gateway shuts down as on a signal) when the
    worker exits without being asked, so a gateway never goes on taking jobs nobody runs and
    a supervisor restarts both. Returns (``stopping``: set it before stopping the worker on
    purpose, ``died``: set when the worker went on its own)."""
    stopping, died = threading.Event(), threading.Event()

    def _watch() -> None:
        proc.wait()
        if not stopping.is_set():
            died.set()
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=_watch, name="watch-worker", daemon=True).start()
    return stopping, died


def exit_cleanly_on_signals() -> None:
    """uvicorn re-raises SIGTERM/SIGINT after its own shutdown; turn them into a normal exit so
    ``finally`` blocks (stopping the worker) run and the exit status is 0."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)


def run_api(host: str, port: int, *, workers: int = 1) -> None:
    """uvicorn with ``workers`` gateway processes, logging as FADA_LOG_FORMAT and FADA_LOG_LEVEL
    say (``shared.logs``). With more than one, their metrics are kept in files that every
    process reads at a scrape (prometheus_client's multiprocess mode): a scrape lands on one
    process, and must still count every process's requests."""
    import uvicorn

    settings = Settings()
    logs = log_config(settings.log_format, settings.log_level)
    level = settings.log_level.lower()
    if workers <= 1:
        uvicorn.run("api.app:create_app", factory=True, host=host, port=port, proxy_headers=True, log_config=logs,
                    log_level=level)
        return
    given = os.environ.get(MULTIPROC_ENV)
    made = not given
    shared_dir = given or tempfile.mkdtemp(prefix="fada-metrics-")
    os.environ[MULTIPROC_ENV] = shared_dir  # the gateway processes inherit it
    for stale in Path(shared_dir).glob("*.db"):  # counts of an earlier run are not this run's
        stale.unlink()
    try:
        uvicorn.run("api.app:create_app", factory=True, host=host, port=port, workers=workers, proxy_headers=True,
                    log_config=logs, log_level=level)
    finally:
        if made:
            shutil.rmtree(shared_dir, ignore_errors=True)
