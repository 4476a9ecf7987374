"""``fada submit`` end to end: a real uvicorn gateway, a real Celery worker subprocess (embedded
SQLite database and broker), the tiny model with a profile whose budgets keep jobs well under a
second; a worker and the command killed half-way through a run, and the rerun that finishes it.

The per-job fields (``--frame``, ``--external-id-from``) and the manifest's options check need
no worker: they run against the served gateway alone (jobs stay queued) and read the jobs back
through the API (and the stored image through the database, for the frame)."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
import uvicorn
from fastapi import FastAPI
from PIL import Image as PILImage
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner, Result

from cli.client import FadaClient
from cli.submit import collect, idempotency_key, submit
from shared.db.models import Image, Job, JobStatus
from tests.api.conftest import AppFactory, Keys, Serve, run_uvicorn
from tests.api.helpers import count, jpeg, png, succeed_job, ultrasound_dicom
from tests.ingest.builders import make_dicom
from tests.worker.processes import free_port
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


REPO = Path(__file__).resolve().parents[2]
IMAGES = 20  # enough to run several at once and to resume; small enough for CI on 2 cores


def _images(folder: Path, n: int, seed: int, sub: int = 0) -> None:
    folder.mkdir(parents=True)
    for i in range(n):
        target = folder / "sub" if i < sub else folder
        target.mkdir(exist_ok=True)
        (target / f"img{i:03d}.png").write_bytes(png(seed=seed + i, width=24, height=16))


def _run(url: str, key: str, *args: str) -> Result:
    return CliRunner().invoke(_app(), [*args, "--url", url, "--key", key])


def _manifest(out: Path) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = json.loads((out / "manifest.json").read_text())["files"]
    return files


def _succeeded(out: Path) -> int:
    """Entries the CLI has recorded as succeeded so far (0 before the manifest exists); the
    manifest is replaced atomically, so a concurrent read sees a whole version."""
    if not (out / "manifest.json").exists():
        return 0
    return sum(1 for e in _manifest(out).values() if e["status"] == "succeeded")


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


def test_a_worker_and_the_command_killed_mid_run_then_a_rerun_finishes_without_duplicates(
        service: Service, serve: Serve, tmp_path: Path) -> None:
    """Both crash half-way (the command as a process, killed with SIGKILL: the manifest is all
    that is left of it); the rerun finishes every image and creates no second job. Killing the
    command, rather than letting a short ``--timeout`` end it, keeps the test independent of the
    machine's speed: on a busy machine a job can take seconds."""
    first = service.start_worker()
    url = serve(service.client.app)  # type: ignore[arg-type]
    folder, out = tmp_path / "batch", tmp_path / "out"
    n = 16
    _images(folder, n, seed=500)
    service.wait_ready()
    args = (str(folder), "--wait", "--out", str(out), "--concurrency", "4")
    with (tmp_path / "first-run.log").open("wb") as log:
        command = subprocess.Popen([sys.executable, "-m", "cli.main", "submit", *args, "--url", url, "--key",
                                    service.key, "--timeout", "600"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Kill once the command has recorded half the jobs as done. With --concurrency 4 at
            # most 4 more are in flight, so some are always left for the rerun.
            deadline = time.monotonic() + 300
            while _succeeded(out) < n // 2:
                assert command.poll() is None, "the first run ended early:\n" + (tmp_path / "first-run.log").read_text()
                assert time.monotonic() < deadline, "jobs did not progress\n" + first.log_tail()
                time.sleep(0.1)
            first.kill_hard()
            command.kill()
            assert command.wait(30) == -signal.SIGKILL
        finally:
            if command.poll() is None:
                command.kill()
                command.wait(30)
    done_before = _succeeded(out)
    assert n // 2 <= done_before < n
    service.start_worker()
    rerun = _run(url, service.key, *args, "--timeout", "300")
    assert rerun.exit_code == 0, rerun.output + service.workers[-1].log_tail()
    manifest = _manifest(out)
    assert len(manifest) == n and {e["status"] for e in manifest.values()} == {"succeeded"}
    assert len({e["job_id"] for e in manifest.values()}) == n
    assert service.count(Job) == n  # exactly one job per image
    assert all((out / f"img{i:03d}.png.json").is_file() for i in range(n))


def test_wait_timeout_exits_1_and_a_rerun_collects_the_result(
        url: str, keys: Keys, tmp_path: Path, sm: sessionmaker[Session]) -> None:
    """--wait with jobs that do not finish in --timeout: exit 1, the job recorded as unfinished;
    once it has a result, the rerun waits on the same job (none submitted again) and writes it."""
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    (folder / "scan.png").write_bytes(png(seed=12))
    first = _run(url, keys.submitter.secret, str(folder), "--wait", "--timeout", "0.5", "--out", str(out))
    assert first.exit_code == 1, first.output
    assert "unfinished" in first.output
    (entry,) = _manifest(out).values()
    assert entry["status"] == "queued" and entry["error"]["code"] == "timeout"
    succeed_job(sm, str(entry["job_id"]))
    rerun = _run(url, keys.submitter.secret, str(folder), "--wait", "--timeout", "30", "--out", str(out))
    assert rerun.exit_code == 0, rerun.output
    (entry,) = _manifest(out).values()
    assert entry["status"] == "succeeded" and entry["error"] is None
    assert json.loads((out / "scan.png.json").read_text())["job_id"] == entry["job_id"]
    assert json.loads((out / "scan.png.coco.json").read_text())["images"][0]["id"] == entry["job_id"]
    assert count(sm, Job) == 1


# --- per-job fields and the manifest's options (the gateway alone: jobs stay queued) ------------


def _jobs_by_name(url: str, key: str, out: Path) -> dict[str, dict[str, object]]:
    """Each manifest entry's job, read back through the API, by the entry's relative name."""
    with FadaClient(url, key) as fada:
        return {str(e["name"]): fada.get_job(str(e["job_id"])) for e in _manifest(out).values()}


@pytest.mark.parametrize(("source", "expected"), [
    ("none", {"scan.v2.png": None, "sub/IM0001": None, "lone.png": None}),
    ("name", {"scan.v2.png": "scan.v2.png", "sub/IM0001": "IM0001", "lone.png": "lone.png"}),
    ("stem", {"scan.v2.png": "scan.v2", "sub/IM0001": "IM0001", "lone.png": "lone"}),
    # relative to the folder argument; a file given directly is its name
    ("relpath", {"scan.v2.png": "scan.v2.png", "sub/IM0001": "sub/IM0001", "lone.png": "lone.png"}),
])
def test_external_ids_arrive_on_the_jobs(url: str, keys: Keys, tmp_path: Path, source: str,
                                         expected: dict[str, str | None]) -> None:
    folder, out = tmp_path / "images", tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (folder / "scan.v2.png").write_bytes(png(seed=1))
    (folder / "sub" / "IM0001").write_bytes(ultrasound_dicom())
    (tmp_path / "lone.png").write_bytes(png(seed=2))
    result = _run(url, keys.submitter.secret, str(folder), str(tmp_path / "lone.png"), "--recursive",
                  "--external-id-from", source, "--out", str(out))
    assert result.exit_code == 0, result.output
    jobs = _jobs_by_name(url, keys.submitter.secret, out)
    assert {name: job["external_id"] for name, job in jobs.items()} == expected
    assert {e["external_id"] for e in _manifest(out).values()} == set(expected.values())
    with FadaClient(url, keys.submitter.secret) as fada:  # the service's filter finds them by that id
        for name, external_id in expected.items():
            if external_id is not None:
                assert [j["id"] for j in fada.list_jobs(external_id=external_id)["items"]] == [jobs[name]["id"]]


def test_shared_external_ids_are_warned_about(url: str, keys: Keys, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    (folder / "a" / "scan.png").write_bytes(png(seed=3))
    (folder / "b" / "scan.png").write_bytes(png(seed=4))
    result = _run(url, keys.submitter.secret, str(folder), "-r", "--external-id-from", "name", "--out",
                  str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "warning: 1 external id(s) are shared" in result.output and "'scan.png'" in result.output
    quiet = _run(url, keys.submitter.secret, str(folder), "-r", "--external-id-from", "relpath", "--out",
                 str(tmp_path / "out2"))
    assert quiet.exit_code == 0 and "warning" not in quiet.output, quiet.output


def test_an_external_id_over_128_characters_refuses_the_run_before_sending(
        url: str, keys: Keys, tmp_path: Path, sm: sessionmaker[Session]) -> None:
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    longest_ok, too_long = "a" * 124 + ".png", "b" * 125 + ".png"  # 128 and 129 characters
    (folder / longest_ok).write_bytes(png(seed=5))
    (folder / too_long).write_bytes(png(seed=6))
    (folder / "short.png").write_bytes(png(seed=7))
    refused = _run(url, keys.submitter.secret, str(folder), "--external-id-from", "name", "--out", str(out))
    assert refused.exit_code == 2, refused.output
    assert "1 external id(s) over 128 characters" in refused.output and "nothing was sent" in refused.output
    assert f"{too_long} (129 characters)" in refused.output
    assert count(sm, Job) == 0 and not out.exists()
    # relpath: short names, a long path
    deep = tmp_path / "deep"
    nested = deep / ("d" * 60) / ("e" * 60)
    nested.mkdir(parents=True)
    (nested / "scan.png").write_bytes(png(seed=8))
    assert _run(url, keys.submitter.secret, str(deep), "-r", "--external-id-from", "relpath", "--out",
                str(out)).exit_code == 2
    assert _run(url, keys.submitter.secret, str(deep), "-r", "--external-id-from", "name", "--out",
                str(out)).exit_code == 0
    (folder / too_long).unlink()
    accepted = _run(url, keys.submitter.secret, str(folder), "--external-id-from", "name", "--out",
                    str(tmp_path / "out2"))
    assert accepted.exit_code == 0, accepted.output
    assert longest_ok in {j["external_id"] for j in _jobs_by_name(url, keys.submitter.secret,
                                                                   tmp_path / "out2").values()}


def _three_frames() -> bytes:
    """A multi-frame DICOM whose frames differ: frame i is uniformly FRAME_VALUES[i]."""
    frames = np.stack([np.full((8, 8), value, dtype=np.uint8) for value in FRAME_VALUES])
    return make_dicom(frames, "MONOCHROME2", NumberOfFrames=len(FRAME_VALUES))


FRAME_VALUES = (10, 200, 90)


def test_the_frame_option_chooses_the_dicom_frame(url: str, keys: Keys, tmp_path: Path,
                                                  sm: sessionmaker[Session]) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "cine.dcm").write_bytes(_three_frames())
    for frame in (1, 2):
        out = tmp_path / f"out-{frame}"
        result = _run(url, keys.submitter.secret, str(folder), "--frame", str(frame), "--out", str(out))
        assert result.exit_code == 0, result.output
        (entry,) = _manifest(out).values()
        with sm() as session:  # what the worker will analyse: the stored frame and its pixels
            job = session.get(Job, entry["job_id"])
            assert job is not None
            image = session.get(Image, job.image_id)
            assert image is not None and image.frame == frame and image.data is not None
            pixels = np.asarray(PILImage.open(io.BytesIO(image.data)))
        assert pixels.shape == (8, 8, 3) and set(np.unique(pixels)) == {FRAME_VALUES[frame]}
    # A frame the file does not have: the service refuses it (422), recorded in the manifest.
    out = tmp_path / "out-9"
    result = _run(url, keys.submitter.secret, str(folder), "--frame", "9", "--out", str(out))
    assert result.exit_code == 1, result.output
    (entry,) = _manifest(out).values()
    assert entry["status"] == "error" and entry["error"]["code"] == "frame_out_of_range"
    assert entry["error"]["status"] == 422
    assert count(sm, Job) == 2


def test_the_idempotency_key_covers_the_fields() -> None:
    base = idempotency_key("0" * 64, "autonomous", 0)
    # the keys of manifests written before the fields existed are unchanged
    assert base == "fada-submit-" + hashlib.sha256(f"{'0' * 64}:autonomous".encode()).hexdigest()
    assert idempotency_key("0" * 64, "autonomous", 0, frame=0, external_id=None) == base
    others = {idempotency_key("0" * 64, "autonomous", 0, frame=1), idempotency_key("0" * 64, "hitl", 0),
              idempotency_key("0" * 64, "autonomous", 0, external_id="a"),
              idempotency_key("0" * 64, "autonomous", 0, external_id=""), idempotency_key("0" * 64, "autonomous", 1)}
    assert len(others) == 5 and base not in others


def test_a_rerun_with_other_options_into_the_same_out_is_refused(
        url: str, keys: Keys, tmp_path: Path, sm: sessionmaker[Session]) -> None:
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    (folder / "scan.png").write_bytes(png(seed=9))
    key = keys.submitter.secret
    first = _run(url, key, str(folder), "--external-id-from", "name", "--out", str(out))
    assert first.exit_code == 0, first.output
    recorded = json.loads((out / "manifest.json").read_text())
    assert recorded["version"] == 2
    assert recorded["options"] == {"mode": "autonomous", "frame": 0, "external_id_from": "name"}
    before = (out / "manifest.json").read_bytes()
    for changed in (["--external-id-from", "stem"], ["--external-id-from", "name", "--mode", "hitl"],
                    ["--external-id-from", "name", "--frame", "1"], []):
        refused = _run(url, key, str(folder), *changed, "--out", str(out))
        assert refused.exit_code == 2, (changed, refused.output)
        message = " ".join(refused.output.split())
        assert "was written by a run with --external-id-from name --frame 0 --mode autonomous" in message, message
        assert "pass another --out" in message
        assert (out / "manifest.json").read_bytes() == before  # the manifest is left as it was
    assert count(sm, Job) == 1
    # The same options (an explicit --frame 0 is the default): resumed, nothing resubmitted.
    again = _run(url, key, str(folder), "--external-id-from", "name", "--frame", "0", "--out", str(out))
    assert again.exit_code == 0, again.output
    assert "skipped" in again.output and count(sm, Job) == 1
    # Other options into another folder: a job of their own (a key of its own: no 422 for reuse).
    other = _run(url, key, str(folder), "--external-id-from", "stem", "--out", str(tmp_path / "out-stem"))
    assert other.exit_code == 0, other.output
    assert count(sm, Job) == 2
    assert [j["external_id"] for j in _jobs_by_name(url, key, tmp_path / "out-stem").values()] == ["scan"]


def test_a_manifest_without_options_is_read_as_the_defaults(
        url: str, keys: Keys, tmp_path: Path, sm: sessionmaker[Session]) -> None:
    folder, out = tmp_path / "images", tmp_path / "out"
    folder.mkdir()
    (folder / "scan.png").write_bytes(png(seed=10))
    first = _run(url, keys.submitter.secret, str(folder), "--out", str(out))
    assert first.exit_code == 0, first.output
    legacy = json.loads((out / "manifest.json").read_text())
    for entry in legacy["files"].values():
        del entry["external_id"]
    (out / "manifest.json").write_text(json.dumps({"version": 1, "files": legacy["files"]}))
    refused = _run(url, keys.submitter.secret, str(folder), "--external-id-from", "name", "--out", str(out))
    assert refused.exit_code == 2 and "--external-id-from none" in " ".join(refused.output.split())
    assert json.loads((out / "manifest.json").read_text())["version"] == 1  # a refused run leaves it as it was
    resumed = _run(url, keys.submitter.secret, str(folder), "--mode", "hitl", "--out", str(out))
    assert resumed.exit_code == 0, resumed.output
    assert "skipped" in resumed.output and count(sm, Job) == 1
    # Adopted: rewritten with the options, the mode being this run's (version 1 did not record it).
    rewritten = json.loads((out / "manifest.json").read_text())
    assert rewritten["version"] == 2
    assert rewritten["options"] == {"mode": "hitl", "frame": 0, "external_id_from": "none"}
    assert rewritten["files"] == legacy["files"]
    assert _run(url, keys.submitter.secret, str(folder), "--out", str(out)).exit_code == 2  # now it is known


def test_a_run_past_the_key_s_pending_limit_waits_to_be_admitted(
        make_app: AppFactory, serve: Serve, keys: Keys, sm: sessionmaker[Session], tmp_path: Path) -> None:
    """Limit 1, three images sent at once: two are refused (429) until the first job ends. The
    first is held longer than the client's own retries last, so the command's own wait for
    admission is what gets them in; none is sent twice."""
    url = serve(make_app(max_pending_per_key=1, pending_retry_after_seconds=1))
    folder, out = tmp_path / "images", tmp_path / "out"
    _images(folder, 3, seed=300)
    outcome: list[Result] = []
    command = threading.Thread(target=lambda: outcome.append(
        _run(url, keys.submitter.secret, str(folder), "--out", str(out), "--timeout", "120")))
    command.start()
    finished: set[str] = set()
    deadline = time.monotonic() + 120
    while command.is_alive() and time.monotonic() < deadline:
        with sm() as session:
            queued = [job_id for job_id in session.scalars(select(Job.id).where(Job.status == JobStatus.queued))
                      if job_id not in finished]
        if queued and not finished:
            time.sleep(7)  # longer than the client's 4 retries of 1 s: the refusals reach the command
        for job_id in queued:
            succeed_job(sm, job_id)
            finished.add(job_id)
        time.sleep(0.2)
    command.join(timeout=5)
    [result] = outcome
    assert result.exit_code == 0, result.output
    assert len(_manifest(out)) == 3 and all(e["job_id"] for e in _manifest(out).values())
    assert count(sm, Job) == 3  # each image once


# --- the service restarts during a run -------------------------------------------------------------


class RestartableServer:
    """The app in uvicorn on a fixed port, which a test can stop and start again (a gateway
    restart: connections refused in between)."""

    def __init__(self, app: FastAPI) -> None:
        self.app, self.port = app, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._running: tuple[uvicorn.Server, threading.Thread] | None = None

    def start(self) -> None:
        self._running = run_uvicorn(self.app, self.port)

    def stop(self) -> None:
        if self._running:
            server, thread = self._running
            server.should_exit = True
            thread.join(10)
            self._running = None


def test_a_gateway_restart_during_a_waiting_run_is_waited_out(
        make_app: AppFactory, keys: Keys, sm: sessionmaker[Session], tmp_path: Path) -> None:
    """The gateway is down longer than the client's own retries (4, about 7.5 s): the run waits
    for it, and records the job that succeeded meanwhile as succeeded, not as an error."""
    gateway = RestartableServer(make_app())
    gateway.start()
    folder, out = tmp_path / "images", tmp_path / "out"
    _images(folder, 1, seed=700)
    results: list[Result] = []
    run = threading.Thread(target=lambda: results.append(
        _run(gateway.url, keys.submitter.secret, str(folder), "--wait", "--out", str(out), "--timeout", "120")))
    run.start()
    try:
        deadline = time.monotonic() + 30
        while not ((out / "manifest.json").exists() and all(e.get("job_id") for e in _manifest(out).values())):
            assert run.is_alive() and time.monotonic() < deadline, results and results[0].output
            time.sleep(0.05)
        gateway.stop()
        (job_id,) = [str(e["job_id"]) for e in _manifest(out).values()]
        succeed_job(sm, job_id)  # the worker finishes the job while the gateway is down
        time.sleep(9)
        assert run.is_alive(), "the run gave up while the gateway was down:\n" + results[0].output
        gateway.start()
        run.join(60)
    finally:
        gateway.stop()
    assert not run.is_alive() and results[0].exit_code == 0, results and results[0].output
    (entry,) = _manifest(out).values()
    assert entry["status"] == "succeeded" and entry["job_id"] == job_id and entry["error"] is None
    assert json.loads((out / str(entry["result"])).read_text())["job_id"] == job_id
    assert count(sm, Job) == 1


def test_a_service_never_reached_fails_the_run_without_waiting(keys: Keys, tmp_path: Path) -> None:
    """A wrong URL is not an outage: the run ends after the client's own retries."""
    folder, out = tmp_path / "images", tmp_path / "out"
    _images(folder, 1, seed=710)
    started = time.monotonic()
    result = _run(f"http://127.0.0.1:{free_port()}", keys.submitter.secret, str(folder), "--out", str(out))
    assert result.exit_code == 1, result.output
    assert time.monotonic() - started < 60  # the client's retries (about 7.5 s), not the outage patience (300 s)
    (entry,) = _manifest(out).values()
    assert entry["status"] == "error" and entry["error"]["code"] == "transport"
