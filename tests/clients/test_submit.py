"""``fada submit`` end to end: a real uvicorn gateway, a real Celery worker subprocess (embedded
SQLite database and broker), the tiny model with a profile whose budgets keep jobs well under a
second; a worker killed half-way through a run, and the rerun that finishes it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from cli.submit import collect, submit
from shared.db.models import Job, JobStatus
from tests.api.conftest import Serve
from tests.api.helpers import jpeg, png, ultrasound_dicom
from tests.worker.test_celery_worker import Service, _service

# Budgets just large enough for each phase's grammar: the random model answers in ~0.5 s.
FAST_BUDGETS = {"interpret": 270, "classify": 32, "detect": 30, "keypoints": 30, "segment": 40}


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(submit)
    return app


@pytest.fixture
def fast_profile(small_profile_path: Path, tmp_path: Path) -> Path:
    data = json.loads(small_profile_path.read_text())
    data["name"], data["max_new_tokens"] = "fada-skd-fast", FAST_BUDGETS
    path = tmp_path / "fast-profile.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def service(tmp_path: Path, tiny_model_dir: Path, fast_profile: Path) -> Iterator[Service]:
    urls = (f"sqlite:///{tmp_path}/fada.db", f"sqla+sqlite:///{tmp_path}/broker.db")
    yield from _service(tmp_path, *urls, tiny_model_dir, fast_profile)


IMAGES = 20  # enough to run several at once and to resume; small enough for CI on 2 cores


def _images(folder: Path, n: int, seed: int, sub: int = 0) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        target = folder / "sub" if i < sub else folder
        target.mkdir(exist_ok=True)
        (target / f"img{i:03d}.png").write_bytes(png(seed=seed + i, width=24, height=16))


def _run(url: str, key: str, *args: str) -> Result:
    return CliRunner().invoke(_app(), [*args, "--url", url, "--key", key])


def _manifest(out: Path) -> dict[str, dict[str, object]]:
    files: dict[str, dict[str, object]] = json.loads((out / "manifest.json").read_text())["files"]
    return files


def test_collect_finds_images_by_content(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(png())
    (tmp_path / "b.txt").write_bytes(jpeg())
    (tmp_path / "sub" / "c").write_bytes(ultrasound_dicom())
    (tmp_path / "notes.png").write_text("not an image")
    found, skipped, folders = collect([tmp_path], recursive=False)
    assert [rel for _, rel in found] == ["a.bin", "b.txt"] and skipped == 1 and folders == 1
    found, skipped, folders = collect([tmp_path], recursive=True)
    assert [rel for _, rel in found] == ["a.bin", "b.txt", "sub/c"] and skipped == 1 and folders == 0


def test_submit_a_folder_and_wait_for_every_result(service: Service, serve: Serve, tmp_path: Path) -> None:
    service.start_worker()
    url = serve(service.client.app)  # type: ignore[arg-type]
    folder, out = tmp_path / "images", tmp_path / "out"
    _images(folder, IMAGES, seed=100, sub=4)
    (folder / "notes.txt").write_text("not an image")
    service.wait_ready()
    result = _run(url, service.key, str(folder), "--recursive", "--wait", "--out", str(out), "--concurrency", "4",
                  "--timeout", "240")
    assert result.exit_code == 0, result.output + service.workers[-1].log_tail()
    assert "not an image (skipped)" in result.output
    manifest = _manifest(out)
    assert len(manifest) == IMAGES and {e["status"] for e in manifest.values()} == {"succeeded"}
    for entry in manifest.values():
        document = json.loads((out / str(entry["result"])).read_text())
        assert document["job_id"] == entry["job_id"] and document["image"]["format"] == "png"
        assert json.loads((out / str(entry["coco"])).read_text())["images"][0]["id"] == entry["job_id"]
    assert (out / "sub" / "img000.png.json").is_file() and (out / f"img{IMAGES - 1:03d}.png.coco.json").is_file()
    assert service.count(Job) == IMAGES
    again = _run(url, service.key, str(folder), "--recursive", "--wait", "--out", str(out))
    assert again.exit_code == 0, again.output
    assert service.count(Job) == IMAGES  # nothing resubmitted


def test_a_worker_killed_mid_run_then_a_rerun_finishes_without_duplicates(
        service: Service, serve: Serve, tmp_path: Path) -> None:
    first = service.start_worker()
    url = serve(service.client.app)  # type: ignore[arg-type]
    folder, out = tmp_path / "batch", tmp_path / "out"
    n = 16
    _images(folder, n, seed=500)
    service.wait_ready()
    outcome: list[Result] = []
    args = (str(folder), "--wait", "--out", str(out), "--concurrency", "4")
    run = threading.Thread(target=lambda: outcome.append(_run(url, service.key, *args, "--timeout", "20")))
    run.start()
    deadline = time.monotonic() + 60
    while service.count(Job, Job.status == JobStatus.succeeded) < n // 2:
        assert time.monotonic() < deadline, "jobs did not progress\n" + first.log_tail()
        time.sleep(0.1)
    first.kill_hard()
    run.join(60)
    assert outcome and outcome[0].exit_code == 1, outcome[0].output if outcome else "still running"
    done_before = sum(1 for e in _manifest(out).values() if e["status"] == "succeeded")
    assert n // 2 <= done_before < n
    service.start_worker()
    rerun = _run(url, service.key, *args, "--timeout", "120")
    assert rerun.exit_code == 0, rerun.output + service.workers[-1].log_tail()
    manifest = _manifest(out)
    assert len(manifest) == n and {e["status"] for e in manifest.values()} == {"succeeded"}
    assert len({e["job_id"] for e in manifest.values()}) == n
    assert service.count(Job) == n  # exactly one job per image
    assert all((out / f"img{i:03d}.png.json").is_file() for i in range(n))
