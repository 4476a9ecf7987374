"""``services.maintenance.Every``, the loop under the sweeper, the notifier and the heartbeat:
it survives failures, and a run of failures (a database outage) is a few log lines, not one
per pass."""

from __future__ import annotations

import logging
import threading

import pytest
from sqlalchemy import create_engine, text

from services.maintenance import Every


def test_a_run_of_failures_is_logged_when_it_starts_and_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    done = threading.Event()
    # A real driver error, multi-line as SQLAlchemy writes them (statement, background link).
    engine = create_engine("sqlite:///file:/nonexistent/folder/x.db?mode=ro&uri=true")

    def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls <= 30:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        elif calls == 35:
            done.set()

    with caplog.at_level(logging.INFO, logger="services.maintenance"):
        every = Every(0.001, flaky, name="fada-test").start()
        assert done.wait(30), f"only {calls} passes"
        every.stop()
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "services.maintenance"]
    assert len(lines) == 2, lines  # 30 failures, one line when they start, one when they end
    (level, failed), (level_back, back) = lines
    assert level == logging.WARNING and failed.startswith("fada-test failed: OperationalError: ")
    assert "\n" not in failed
    assert level_back == logging.INFO and back == "fada-test works again after 30 failed pass(es)"


def test_a_long_run_of_failures_is_logged_again_with_its_count(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    done = threading.Event()

    def failing() -> None:
        nonlocal calls
        calls += 1
        if calls >= 20:
            done.set()
        raise RuntimeError("database is down")

    with caplog.at_level(logging.WARNING, logger="services.maintenance"):
        every = Every(0.001, failing, name="fada-test", quiet_seconds=0).start()
        assert done.wait(30)
        every.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "services.maintenance"]
    assert messages[0] == "fada-test failed: RuntimeError: database is down"
    assert messages[1] == "fada-test failed (2 passes in a row): RuntimeError: database is down"
