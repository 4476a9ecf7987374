"""The `fada` command as a user runs it: build the tiny model, analyse a real DICOM."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from cli.main import app

runner = CliRunner()


def test_build_tiny_then_analyze_a_real_ultrasound_dicom(tmp_path: Path, small_profile_path: Path) -> None:
    built = runner.invoke(app, ["model", "build-tiny", "--out", str(tmp_path / "m"), "--seed", "7"])
    assert built.exit_code == 0, built.output
    dicom = str(get_testdata_file("examples_palette.dcm"))
    result = runner.invoke(app, ["analyze", dicom, "--model", str(tmp_path / "m"),
                                 "--profile", str(small_profile_path)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["model"]["untrained"] is True
    assert doc["image"]["format"] == "dicom"
    assert {p["status"] for p in doc["phases"].values()} <= {"ok", "skipped"}
    assert doc["mapping"]["tier"] in {"P1", "P2", "P3", "P4", "P5"}


def test_hitl_mode_stops_awaiting_review(tiny_model_dir: Path, small_profile_path: Path) -> None:
    result = runner.invoke(app, ["analyze", str(get_testdata_file("examples_palette.dcm")), "--model",
                                 str(tiny_model_dir), "--profile", str(small_profile_path), "--mode", "hitl"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["status"] == "awaiting_review" and doc["phases"]["detect"]["status"] == "skipped"


def test_missing_model_and_bad_input_are_clear_errors(tmp_path: Path, tiny_model_dir: Path) -> None:
    image = tmp_path / "notes.txt"
    image.write_text("not an image")
    missing = runner.invoke(app, ["analyze", str(image), "--model", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "base model not found" in missing.output
    bad = runner.invoke(app, ["analyze", str(image), "--model", str(tiny_model_dir)])
    assert bad.exit_code == 2 and "unsupported_media_type" in bad.output


def test_two_workers_on_one_host_get_different_celery_node_names() -> None:
    """One worker per GPU means several on a host: Celery's inspect and control commands tell
    nodes apart by name only."""
    code = "from cli.processes import worker_argv; argv = worker_argv(); print(argv[argv.index('-n') + 1])"
    names = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2]).stdout.strip() for _ in range(2)]
    assert names[0] != names[1] and all(n.startswith("fada-gpu-") and n.endswith("@%h") for n in names), names
