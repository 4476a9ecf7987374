"""The HITL flow with real processes: the gateway (in-process ASGI client) and a Celery worker
subprocess on the embedded default (SQLite database + SQLite broker), the tiny model.

submit (hitl) -> awaiting_review -> the reviewer's interpretation review chooses detect and a
group -> the worker resumes the job -> succeeded with the interpretation unchanged and detect
run for that group -> the annotation review -> review_state reviewed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from services.keys import create_key
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import upgrade
from shared.db.models import Role
from shared.settings import Settings
from tests.ingest.builders import encode, noise_rgb
from tests.worker.processes import WorkerProcess

from .conftest import Key


@dataclass
class Live:
    client: TestClient
    submitter: Key
    reviewer: Key
    worker: WorkerProcess

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/jobs/{job_id}", headers=self.reviewer.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def wait_status(self, job_id: str, *statuses: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = self.job(job_id)
        while job["status"] not in statuses and time.monotonic() < deadline:
            time.sleep(0.1)
            job = self.job(job_id)
        assert job["status"] in statuses, f"{job}\n{self.worker.log_tail(3000)}"
        return job

    def result(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/jobs/{job_id}/result", headers=self.reviewer.headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def queue(self) -> list[tuple[str, list[str]]]:
        r = self.client.get("/v1/reviews/queue", headers=self.reviewer.headers)
        assert r.status_code == 200, r.text
        return [(i["id"], i["pending"]) for i in r.json()["items"]]


# The smallest token budgets the grammars accept for these phases (interpret needs ~220 for its 8
# fields): the random model writes to the limit, so the budget is the test's running time.
E2E_BUDGETS = {"interpret": 220, "classify": 32, "detect": 60, "keypoints": 60, "segment": 80}


@pytest.fixture(scope="session")
def e2e_profile_path(small_profile_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = json.loads(small_profile_path.read_text())
    data["max_new_tokens"] = E2E_BUDGETS
    path = tmp_path_factory.mktemp("profiles") / "e2e.json"
    path.write_text(json.dumps(data))
    return path


def _stop(worker: WorkerProcess) -> None:
    """Warm shutdown through the main process alone: signalling the whole group (as
    ``WorkerProcess.stop`` does) kills the pool child first, and the main process then starts
    a new one, which loads the model again and delays the exit for many seconds."""
    if worker.proc.poll() is None:
        os.kill(worker.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.proc.wait(20)
    worker.stop()  # kills what is left, closes the log


@pytest.fixture
def live(tmp_path: Path, tiny_model_dir: Path, e2e_profile_path: Path) -> Iterator[Live]:
    env = {"FADA_DATA_DIR": str(tmp_path), "FADA_DATABASE_URL": f"sqlite:///{tmp_path}/fada.db",
           "FADA_BROKER_URL": f"sqla+sqlite:///{tmp_path}/broker.db", "FADA_MODEL_DIR": str(tiny_model_dir),
           "FADA_PROFILE": str(e2e_profile_path), "FADA_WORKER_HEARTBEAT_SECONDS": "1"}
    settings = Settings(**{k.removeprefix("FADA_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    made: dict[Role, Key] = {}
    with make_sessionmaker(engine).begin() as session:
        for role in (Role.submitter, Role.reviewer):
            new = create_key(session, name=f"e2e {role.value}", role=role)
            made[role] = Key(id=new.key.id, secret=new.secret, role=role)
    engine.dispose()
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        with TestClient(create_app(settings)) as client:
            yield Live(client, made[Role.submitter], made[Role.reviewer], worker)
    finally:
        _stop(worker)


def test_a_hitl_job_is_resumed_by_the_reviewers_choice_and_then_reviewed(live: Live) -> None:
    image = encode(noise_rgb(64, 48, seed=21), "PNG")
    r = live.client.post("/v1/jobs", files={"file": ("h.png", image)}, data={"mode": "hitl"},
                         headers=live.submitter.headers)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = live.wait_status(job_id, "awaiting_review", "failed")
    assert (job["status"], job["review_state"]) == ("awaiting_review", "pending")
    assert live.queue() == [(job_id, ["interpretation"])]
    first = live.result(job_id)
    assert first["status"] == "awaiting_review" and first["phases"]["detect"]["status"] == "skipped"

    gate = {"dimension": "interpretation", "score": 1, "decision": "accept", "next_phases": ["detect"],
            "group": "brain"}
    r = live.client.post(f"/v1/jobs/{job_id}/reviews", json=gate, headers=live.reviewer.headers)
    assert r.status_code == 201, r.text
    assert live.queue() == []  # nothing to review while the worker runs the second stage

    job = live.wait_status(job_id, "succeeded", "failed")
    assert job["status"] == "succeeded" and job["error"] is None, job
    assert job["review_state"] == "pending"
    final = live.result(job_id)
    assert final["interpretation"] == first["interpretation"] and final["interpretation"] is not None
    assert final["classification"] == first["classification"]
    assert final["phases"]["interpret"] == first["phases"]["interpret"]
    assert final["mapping"]["tier"] == "HITL" and final["mapping"]["group"] == "brain"
    assert final["mapping"]["detect_classes"] == ["Brain", "CSP", "LV"]
    # detect ran (the random model's answer may or may not validate); segment was not chosen
    assert final["phases"]["detect"]["status"] in {"ok", "invalid_output"}
    assert final["phases"]["detect"]["raw"] is not None
    assert final["phases"]["segment"] == {**final["phases"]["segment"], "status": "skipped",
                                          "detail": "not chosen by the reviewer"}
    assert {d["label"] for d in final["detections"]} <= {"Brain", "CSP", "LV"}

    assert live.queue() == [(job_id, ["annotation"])]
    r = live.client.post(f"/v1/jobs/{job_id}/reviews", headers=live.reviewer.headers,
                         json={"dimension": "annotation", "score": 2, "decision": "correct",
                               "corrections": {"annotations": [{"label": "Brain", "bbox": [4, 4, 40, 30]}]}})
    assert r.status_code == 201, r.text
    assert r.json()["model_revision"] == final["model"]["revision"]
    assert live.job(job_id)["review_state"] == "reviewed"
    assert live.queue() == []
    reviews = live.client.get(f"/v1/jobs/{job_id}/reviews", headers=live.reviewer.headers).json()["items"]
    assert [(i["dimension"], i["next_phases"], i["group"]) for i in reviews] == [
        ("interpretation", ["detect"], "brain"), ("annotation", None, None)]
