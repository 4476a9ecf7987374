"""The pool process's own time limit (``worker.tasks.process_time_limit``): past it the process
writes every thread's stack and exits, even while a thread holds the GIL; a task that ends in
time disarms it. Run in a child interpreter, since the limit ends the process."""

from __future__ import annotations

import subprocess
import sys
import time

HUNG = """
import time
from worker.tasks import process_time_limit
with process_time_limit(1):
    {body}
print("finished")
time.sleep(2)  # the limit must be disarmed by now
print("still alive")
"""


def _run(body: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", HUNG.format(body=body)], capture_output=True, text=True, timeout=60)
    return done, time.monotonic() - started


def test_a_hung_task_ends_its_process_with_the_stacks_written() -> None:
    # a busy loop in C that never releases the GIL: a Python timer thread could not run
    done, _ = _run("import re; re.match(r'(a+)+$', 'a' * 40 + 'b')")
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "finished" not in done.stdout
    assert "Timeout" in done.stderr and "Thread" in done.stderr, done.stderr[-2000:]


def test_a_task_that_ends_in_time_disarms_the_limit() -> None:
    done, took = _run("time.sleep(0.2)")
    assert done.returncode == 0 and done.stdout.split() == ["finished", "still", "alive"], done.stderr[-2000:]
    assert took >= 2
