"""bench/metrics_scrape.py on a small database of each kind: it fills, times and prints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.fixtures_db import postgres_url  # noqa: F401  (fails under CI without PostgreSQL)

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "metrics_scrape.py"


def test_the_scrape_bench_runs_on_both_databases(postgres_url: str,  # noqa: F811  (PostgreSQL must answer)
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("metrics_scrape", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert module.main(["--jobs", "1000", "--repeats", "2", "--setups", "postgres,sqlite"]) == 0
    out = capsys.readouterr().out
    assert "on 1000 jobs" in out
    rows = [line for line in out.splitlines() if "postgres" in line or "sqlite" in line]
    assert len(rows) == 2, out
