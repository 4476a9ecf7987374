"""Subprocesses for the HTTP benchmarks: free ports, uvicorn servers, workers, waiting and stopping.

Every process is started through a :class:`ProcessGroup`, which stops all of them when its
``with`` block ends, whatever happened inside; their output goes to log files, whose tails
are printed when a process fails to come up.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

from cli.processes import stop_process

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def child_env(overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment without any FADA_* variable, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FADA_")}
    return {**env, **overrides}


def uvicorn_argv(factory: str, port: int, *, app_dir: str = ".") -> list[str]:
    """One uvicorn process (no --workers supervisor), no access log: the same for every app."""
    return [sys.executable, "-m", "uvicorn", "--factory", factory, "--app-dir", app_dir, "--host", HOST,
            "--port", str(port), "--no-access-log", "--log-level", "warning"]


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class ProcessGroup:
    """Started processes, stopped (SIGTERM, then SIGKILL) in reverse order on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(list(argv), env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append((name, proc, log))
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> Path:
        return next(log for _, p, log in self.procs if p is proc)

    def stop_all(self) -> None:
        while self.procs:
            _, proc, _ = self.procs.pop()
            stop_process(proc, timeout=15)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop_all()


def wait_for(url: str, procs: ProcessGroup, watched: Sequence[subprocess.Popen[bytes]], *,
             timeout: float, status: int = 200) -> float:
    """Poll ``url`` until it answers ``status``; seconds waited. Fails early when a watched
    process exits, and shows the end of its log either way."""
    started = time.perf_counter()
    last = "no answer yet"
    while time.perf_counter() - started < timeout:
        for proc in watched:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} while waiting for {url}:\n"
                                   f"{log_tail(procs.log_of(proc))}")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == status:
                return time.perf_counter() - started
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    tails = "\n".join(f"--- {procs.log_of(p).name}\n{log_tail(procs.log_of(p))}" for p in watched)
    raise TimeoutError(f"{url} did not answer {status} within {timeout:.0f} s (last: {last})\n{tails}")
