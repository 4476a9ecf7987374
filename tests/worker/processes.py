"""Real processes for the integration tests: a Celery worker subprocess (``fada worker``'s
command line) and a private redis-server that a test may stop and start."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from cli.processes import worker_argv
from tests.fixtures_db import peer_unavailable

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_redis(url: str) -> None:
    """Fail under CI, skip elsewhere, when Redis does not answer."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        peer_unavailable(f"Redis not reachable at {url}: {exc}")


class WorkerProcess:
    """``celery -A worker.app worker -Q gpu -c 1`` in its own process group, so a test can
    kill the whole worker (main process and pool child) at once, as a crash would."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(worker_argv(loglevel="INFO"), cwd=REPO, env={**os.environ, **env},
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill_hard(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGTERM to the main process only: a warm shutdown. Signalling the whole group would
            # kill the pool child too, which the main process then replaces (a model reload).
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything the group left behind
        self._log.close()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


class PrivateRedis:
    """A redis-server of the test's own on a free port, with no persistence: stopping it
    loses every queued message, as a crashed broker without AOF would."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            peer_unavailable("redis-server is not installed")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # no save, no goodbye: what a crash looks like to clients
            self.proc.wait(10)
        self.proc = None
