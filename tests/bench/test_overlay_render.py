"""bench/overlay_render.py, small: it draws, times and prints its three rows, on the synthetic
frame and on pydicom's real scan."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "overlay_render.py"


def test_the_overlay_bench_prints_each_row_against_its_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("overlay_render", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    for argv in (["--size", "320x240", "--repeats", "2"], ["--real-scan", "--repeats", "2"]):
        assert module.main(argv) == 0
        out = capsys.readouterr().out
        ratios = re.findall(r"│\s+[\d.]+ │\s+([\d.]+) │", out)
        assert len(ratios) == 3 and ratios[0] == "1.00", out
    assert "800x350" in out  # the real scan's own size
