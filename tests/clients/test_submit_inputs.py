"""``fada submit``: which files of a folder are sent, skipped or failed before sending. An empty
file named as an image is a failed input (named, counted as failed, exit 1), not a skipped one;
a file without an image name or content is still skipped. Against the real gateway served by
uvicorn (no worker: jobs stay queued), as in test_submit.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from cli.submit import collect, submit
from shared.db.models import Job
from tests.api.conftest import Keys
from tests.api.helpers import count, png


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(submit)
    return app


def _counted(output: str, label: str) -> int | None:
    """The number on the summary table's row ``label``, or None if there is no such row."""
    found = re.search(rf"^\W*{re.escape(label)}\W+(\d+)\W*$", output, re.MULTILINE)
    return int(found.group(1)) if found else None


def test_collect_keeps_empty_files_named_as_images_and_skips_other_non_images(tmp_path: Path) -> None:
    (tmp_path / "good.png").write_bytes(png(seed=1))
    for name in ("empty.png", "EMPTY2.JPG", "empty.jpeg", "empty.dcm"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty").write_bytes(b"")  # no image name: nothing says it should have been one
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    found, skipped, folders = collect([tmp_path], recursive=False)
    assert sorted(rel for _, rel in found) == ["EMPTY2.JPG", "empty.dcm", "empty.jpeg", "empty.png", "good.png"]
    assert skipped == 3 and folders == 0


def test_an_empty_png_counts_as_failed_is_named_and_exits_1(url: str, keys: Keys, tmp_path: Path,
                                                             sm: sessionmaker[Session]) -> None:
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    (folder / "good.png").write_bytes(png(seed=11))
    (folder / "broken.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    result = CliRunner().invoke(_app(), [str(folder), "--out", str(out), "--url", url,
                                         "--key", keys.submitter.secret])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert f"error: {folder / 'broken.png'}: empty file (0 bytes)" in message, result.output
    assert _counted(result.output, "failed") == 1, result.output
    assert _counted(result.output, "submitted") == 1, result.output
    assert _counted(result.output, "not an image (skipped)") == 1, result.output  # notes.txt only
    files = json.loads((out / "manifest.json").read_text())["files"]
    entries = {e["name"]: e for e in files.values()}
    assert entries["broken.png"]["status"] == "failed" and entries["broken.png"]["job_id"] is None
    assert entries["broken.png"]["error"]["code"] == "empty_file"
    assert entries["good.png"]["job_id"] and "notes.txt" not in entries
    assert count(sm, Job) == 1  # the empty file was not sent

    # A rerun fails it again (it is still empty); once it holds an image, it is sent.
    again = CliRunner().invoke(_app(), [str(folder), "--out", str(out), "--url", url,
                                        "--key", keys.submitter.secret])
    assert again.exit_code == 1 and "broken.png: empty file" in " ".join(again.output.split()), again.output
    (folder / "broken.png").write_bytes(png(seed=12))
    fixed = CliRunner().invoke(_app(), [str(folder), "--out", str(out), "--url", url,
                                        "--key", keys.submitter.secret])
    assert fixed.exit_code == 0, fixed.output
    assert count(sm, Job) == 2
