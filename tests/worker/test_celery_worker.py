"""The job service end to end with real processes: the gateway (in-process ASGI client), a
Celery worker subprocess, PostgreSQL + Redis or the embedded default (SQLite + kombu's
SQLAlchemy transport); webhooks sent by the worker; a worker killed mid-job; Redis restarted
with jobs queued."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from sqlalchemy import func, select, update

from api.app import create_app
from cli.webhooks import verify_webhook
from services.jobs import resume_hitl
from services.keys import configure_webhook, create_key
from services.notify.sealing import secret_box
from services.queue import enqueue_job
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import upgrade
from shared.db.models import Image, Job, JobStatus, Result
from shared.db.types import utcnow
from shared.settings import Settings
from tests.fixtures_db import connections_refused
from tests.ingest.builders import encode, noise_rgb
from tests.webhook_receiver import Receiver, running_receiver

from .processes import PrivateRedis, WorkerProcess, require_redis

SYSTEM_REDIS = "redis://127.0.0.1:6379/11"
FAST_RECOVERY = {  # seconds: leases, sweeps and heartbeats scaled down for tests
    "FADA_LEASE_SECONDS": "3",
    "FADA_SWEEP_INTERVAL_SECONDS": "0.5",
    "FADA_QUEUED_GRACE_SECONDS": "3",
    "FADA_WORKER_HEARTBEAT_SECONDS": "1",
    "FADA_NOTIFY_INTERVAL_SECONDS": "0.2",
    # the retention pass runs on every worker; only jobs a test backdates are old enough
    "FADA_IMAGE_RETENTION_DAYS": "1",
    "FADA_RETENTION_INTERVAL_SECONDS": "0.5",
}


@dataclass
class Service:
    client: TestClient
    key: str
    env: dict[str, str]
    settings: Settings
    tmp: Path
    workers: list[WorkerProcess]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def start_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.env, self.tmp / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.get("/readyz").status_code == 200:
                return
            time.sleep(0.2)
        raise AssertionError("not ready: " + self.client.get("/readyz").text + "\n" + self.workers[-1].log_tail())

    def submit(self, data: bytes, name: str, **fields: str) -> str:
        r = self.client.post("/v1/jobs", files={"file": (name, data)}, data=fields, headers=self.auth)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/jobs/{job_id}", headers=self.auth)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while job["status"] not in statuses and time.monotonic() < deadline:
            time.sleep(0.1)
            job = self.job(job_id)
        assert job["status"] in statuses, f"{job}\n" + "\n".join(w.log_tail(2000) for w in self.workers)
        return job

    def count(self, model: type, *where: Any) -> int:
        engine = make_engine(self.settings.database_url)
        try:
            with make_sessionmaker(engine)() as s:
                return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)
        finally:
            engine.dispose()


def _service(tmp: Path, database_url: str, broker_url: str, model_dir: Path, profile: Path) -> Iterator[Service]:
    env = {"FADA_DATA_DIR": str(tmp), "FADA_DATABASE_URL": database_url, "FADA_BROKER_URL": broker_url,
           "FADA_MODEL_DIR": str(model_dir), "FADA_PROFILE": str(profile), **FAST_RECOVERY}
    settings = Settings(**{k.removeprefix("FADA_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    env["FADA_WEBHOOK_ALLOWED_HOSTS"] = '["127.0.0.1"]'  # the test receiver's host, for the workers
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    with make_sessionmaker(engine).begin() as s:
        key = create_key(s, name="it", role="admin").secret
    engine.dispose()
    service = Service(TestClient(create_app(settings)), key, env, settings, tmp, [])
    try:
        yield service
    finally:
        for worker in service.workers:
            worker.stop()


@pytest.fixture(params=["postgres+redis", "embedded"])
def service(request: pytest.FixtureRequest, tmp_path: Path, tiny_model_dir: Path,
            small_profile_path: Path) -> Iterator[Service]:
    if request.param == "embedded":
        urls = (f"sqlite:///{tmp_path}/fada.db", f"sqla+sqlite:///{tmp_path}/broker.db")
    else:
        require_redis(SYSTEM_REDIS)
        redis.Redis.from_url(SYSTEM_REDIS).flushdb()
        urls = (request.getfixturevalue("postgres_url"), SYSTEM_REDIS)
    yield from _service(tmp_path, *urls, tiny_model_dir, small_profile_path)


def _dicom() -> bytes:
    return Path(str(get_testdata_file("examples_palette.dcm"))).read_bytes()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def test_png_jpeg_dicom_end_to_end(service: Service, receiver: Receiver) -> None:
    engine = make_engine(service.settings.database_url)
    with make_sessionmaker(engine).begin() as s:
        _, secret = configure_webhook(s, service.key[:12], url=receiver.url, allowed_hosts=["127.0.0.1"],
                                      box=secret_box(service.settings, create=True))
    engine.dispose()
    assert secret is not None
    service.start_worker()
    service.wait_ready()
    ids = {
        "png": service.submit(encode(noise_rgb(64, 48, seed=1), "PNG"), "a.png"),
        "jpeg": service.submit(encode(noise_rgb(64, 48, seed=2), "JPEG"), "b.jpg"),
        "dicom": service.submit(_dicom(), "c.dcm", external_id="1.2.3.4"),
    }
    for fmt, job_id in ids.items():
        job = service.wait_status(job_id, "succeeded", "failed")
        assert job["status"] == "succeeded" and job["attempts"] == 1 and job["error"] is None, job
        result = service.client.get(job["result_url"], headers=service.auth).json()
        assert result["job_id"] == job_id and result["image"]["format"] == fmt
        assert result["model"]["untrained"] is True
        assert {"interpret", "classify", "map"} <= set(result["phases"])
        coco = service.client.get(f"/v1/jobs/{job_id}/coco", headers=service.auth).json()
        assert coco["images"][0]["id"] == job_id
    assert service.count(Result) == 3
    # the worker announced each job by itself: signed events at a real receiver
    events = [verify_webhook(secret, r.headers, r.body) for r in receiver.wait_for(3)]
    assert sorted((e["type"], e["data"]["job_id"]) for e in events) == sorted(
        ("job.succeeded", job_id) for job_id in ids.values())
    # the worker's retention pass: a job finished two days ago loses its pixels, the others keep them
    engine = make_engine(service.settings.database_url)
    with make_sessionmaker(engine).begin() as s:
        s.execute(update(Job).where(Job.id == ids["png"]).values(finished_at=utcnow() - timedelta(days=2)))
    engine.dispose()
    deadline = time.monotonic() + 30
    while service.count(Image, Image.purged_at.is_not(None)) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    purged = select(Job.image_id).where(Job.id == ids["png"]).scalar_subquery()
    assert service.count(Image, Image.id == purged, Image.purged_at.is_not(None), Image.data.is_(None)) == 1
    assert service.count(Image, Image.data.is_not(None)) == 2
    assert service.client.get(f"/v1/jobs/{ids['png']}/result", headers=service.auth).status_code == 200
    # the libraries' chatter stays out of the worker's log (progress bars, deprecation warnings)
    log = "".join(worker.log_tail(1_000_000) for worker in service.workers)
    assert "Loading weights" not in log and "FutureWarning" not in log and "model loaded in" in log


def test_hitl_job_waits_for_review_then_resumes_on_the_worker(service: Service) -> None:
    service.start_worker()
    service.wait_ready()
    job_id = service.submit(encode(noise_rgb(64, 48, seed=3), "PNG"), "h.png", mode="hitl")
    job = service.wait_status(job_id, "awaiting_review", "failed")
    assert job["status"] == "awaiting_review" and job["review_state"] == "pending"
    partial = service.client.get(job["result_url"], headers=service.auth).json()
    assert partial["status"] == "awaiting_review" and partial["interpretation"] is not None
    # the review route is the next issue; resume the way it will: row first, message second
    engine = make_engine(service.settings.database_url)
    with make_sessionmaker(engine).begin() as s:
        assert resume_hitl(s, job_id, {"next_phases": ["detect"], "group": None})
    engine.dispose()
    enqueue_job(service.client.app.state.ctx.celery, job_id)  # type: ignore[attr-defined]
    done = service.wait_status(job_id, "succeeded", "failed")
    assert done["status"] == "succeeded"
    final = service.client.get(done["result_url"], headers=service.auth).json()
    assert final["interpretation"] == partial["interpretation"]
    assert service.count(Result) == 1


@pytest.fixture
def redis_service(tmp_path: Path, postgres_url: str, tiny_model_dir: Path) -> Iterator[Service]:
    """Postgres + the system Redis, with the DEFAULT profile so that a job runs for seconds."""
    require_redis(SYSTEM_REDIS)
    redis.Redis.from_url(SYSTEM_REDIS).flushdb()
    yield from _service(tmp_path, postgres_url, SYSTEM_REDIS, tiny_model_dir, Path("fada-skd"))


def test_worker_killed_mid_job_the_job_still_succeeds_once(redis_service: Service) -> None:
    service = redis_service
    first = service.start_worker()
    service.wait_ready()
    job_id = service.submit(encode(noise_rgb(320, 240, seed=4), "PNG"), "k.png")
    service.wait_status(job_id, "running", "succeeded", timeout=60)
    assert service.job(job_id)["status"] == "running", "the job finished before the worker could be killed"
    first.kill_hard()  # main process and pool child, SIGKILL: no ack, no cleanup
    assert service.job(job_id)["status"] == "running"
    service.start_worker()
    job = service.wait_status(job_id, "succeeded", "failed", timeout=180)
    assert job["status"] == "succeeded" and job["attempts"] == 2, job
    assert service.count(Result, Result.job_id == job_id) == 1
    # the dead worker's message is still unacknowledged in Redis; whenever it comes back, it
    # finds the job finished and leaves it alone (tested in test_process.py)


def _wait_for_log(worker: WorkerProcess, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.log_tail(100_000):
        assert worker.proc.poll() is None and time.monotonic() < deadline, f"no {text!r}:\n{worker.log_tail()}"
        time.sleep(0.2)


@pytest.fixture
def pg_redis_service(tmp_path: Path, postgres_url: str, tiny_model_dir: Path,
                     small_profile_path: Path) -> Iterator[Service]:
    require_redis(SYSTEM_REDIS)
    redis.Redis.from_url(SYSTEM_REDIS).flushdb()
    yield from _service(tmp_path, postgres_url, SYSTEM_REDIS, tiny_model_dir, small_profile_path)


def test_a_worker_started_while_the_database_restarts_runs_jobs_once_it_is_back(
        pg_redis_service: Service, postgres_url: str) -> None:
    """A site powering up: the worker comes up before PostgreSQL takes connections. It must not
    become a worker that takes messages and runs nothing."""
    service = pg_redis_service
    with connections_refused(postgres_url):
        worker = service.start_worker()
        _wait_for_log(worker, "first heartbeat of")  # the model loaded; the database refused the beat
    service.wait_ready()  # the heartbeat went on trying
    job_id = service.submit(encode(noise_rgb(64, 48, seed=7), "PNG"), "late-db.png")
    job = service.wait_status(job_id, "succeeded", "failed")
    assert job["status"] == "succeeded" and job["attempts"] == 1, job


def test_messages_taken_while_the_database_is_down_are_kept_until_it_is_back(
        pg_redis_service: Service, postgres_url: str) -> None:
    """Jobs are queued, then PostgreSQL refuses connections as the worker takes their messages.
    The worker holds the message it took and waits for the database (the others stay in
    Redis), instead of failing the task, which would drop the message: every job then runs
    once the database is back, with no help from the sweeper (its grace period is an hour)."""
    service = pg_redis_service
    service.env["FADA_QUEUED_GRACE_SECONDS"] = "3600"
    ids = [service.submit(encode(noise_rgb(48, 40, seed=20 + i), "PNG"), f"held-{i}.png") for i in range(3)]
    with connections_refused(postgres_url):
        worker = service.start_worker()
        _wait_for_log(worker, "fada.run_job[")  # a message was taken
        time.sleep(3)
    for job_id in ids:
        job = service.wait_status(job_id, "succeeded", "failed", timeout=120)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert "Traceback" not in worker.log_tail(100_000)


def test_a_model_that_appears_after_the_worker_started_is_loaded_by_the_first_job(
        pg_redis_service: Service, tiny_model_dir: Path, tmp_path: Path) -> None:
    """The pool process could not load the model (a volume mounted late): its first task loads
    it, instead of every task failing with 'runtime not started' while its message is acked."""
    service = pg_redis_service
    late = tmp_path / "late-model"
    worker = WorkerProcess({**service.env, "FADA_MODEL_DIR": str(late)}, tmp_path / "late-worker.log")
    service.workers.append(worker)
    _wait_for_log(worker, "could not load the model")
    shutil.copytree(tiny_model_dir, late)
    job_id = service.submit(encode(noise_rgb(64, 48, seed=8), "PNG"), "late-model.png")
    job = service.wait_status(job_id, "succeeded", "failed")
    assert job["status"] == "succeeded", job
    assert "runtime was not started" not in worker.log_tail(100_000)


def test_redis_restart_with_jobs_queued_every_job_finishes(tmp_path: Path, postgres_url: str,
                                                           tiny_model_dir: Path, small_profile_path: Path) -> None:
    broker = PrivateRedis(tmp_path)
    broker.start()
    try:
        for service in _service(tmp_path, postgres_url, broker.url, tiny_model_dir, small_profile_path):
            service.start_worker()
            service.wait_ready()
            ids = [service.submit(encode(noise_rgb(48, 40, seed=10 + i), "PNG"), f"{i}.png") for i in range(6)]
            broker.stop()  # every message still in Redis is gone
            queued_before = service.count(Job, Job.status == JobStatus.queued)
            time.sleep(1.0)
            broker.start()
            for job_id in ids:
                assert service.wait_status(job_id, "succeeded", "failed", timeout=180)["status"] == "succeeded"
            assert service.count(Result) == 6
            assert queued_before >= 1, "no job was still queued when Redis went down; the test proved nothing"
    finally:
        broker.stop()


def test_a_broker_outage_longer_than_the_time_limit_does_not_kill_a_worker_whose_job_finished(
        tmp_path: Path, postgres_url: str, tiny_model_dir: Path, small_profile_path: Path) -> None:
    """Redis goes down while a job runs and stays down past the task's time limit. The job
    finishes meanwhile; its process must not be killed for it once Redis is back (Celery's
    parent, blocked reconnecting, used to fire its time-limit timer before reading the result
    and SIGKILL the pool process: a model reload, minutes on a GPU)."""
    broker = PrivateRedis(tmp_path)
    broker.start()
    try:
        for service in _service(tmp_path, postgres_url, broker.url, tiny_model_dir, small_profile_path):
            service.env["FADA_HARD_TIME_LIMIT_SECONDS"] = "20"  # the process's limit: 80 s
            worker = service.start_worker()
            service.wait_ready()
            first = service.submit(encode(noise_rgb(48, 40, seed=40), "PNG"), "during.png")
            _wait_for_log(worker, "running 1 job(s) together")
            broker.stop()
            assert service.wait_status(first, "succeeded", "failed")["status"] == "succeeded"
            time.sleep(85)  # Redis down past the 80 s
            broker.start()
            second = service.submit(encode(noise_rgb(48, 40, seed=41), "PNG"), "after.png")
            assert service.wait_status(second, "succeeded", "failed", timeout=180)["status"] == "succeeded"
            log = worker.log_tail(1_000_000)
            assert "signal 9" not in log and "Hard time limit" not in log, log[-3000:]
            assert log.count("model loaded in") == 1, "the model was loaded again"
    finally:
        broker.stop()


def test_a_warm_shutdown_mid_batch_finishes_every_job_of_the_batch(redis_service: Service) -> None:
    """SIGTERM to the worker's main process (an operator's stop, systemd's KillMode=mixed)
    while it runs a batch of 4: the pool process finishes all four jobs, at their first
    attempt, before the worker exits; none is left running for the lease sweeper."""
    service = redis_service
    service.env["FADA_BATCH_SIZE"] = "4"
    ids = [service.submit(encode(noise_rgb(320, 240, seed=30 + i), "PNG"), f"warm-{i}.png") for i in range(4)]
    worker = service.start_worker()
    deadline = time.monotonic() + 120
    while {service.job(i)["status"] for i in ids} != {"running"}:
        assert time.monotonic() < deadline, worker.log_tail()
        time.sleep(0.1)
    worker.proc.terminate()
    assert worker.proc.wait(180) == 0, worker.log_tail()
    for job_id in ids:
        job = service.job(job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert service.count(Result, Result.job_id.in_(ids)) == 4
