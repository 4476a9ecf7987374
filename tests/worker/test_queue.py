"""The queue helpers against real brokers: the SQLite broker's delivered messages are
purged; a broker that is down does not lose or refuse a submission."""

from __future__ import annotations

import time
from pathlib import Path

from kombu import Connection
from sqlalchemy import create_engine, text

from services.queue import GPU_QUEUE, broker_reachable, enqueue_job, make_celery, purge_delivered
from shared.settings import Settings

from .processes import PrivateRedis, free_port


def _count(db: Path, where: str) -> int:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM kombu_message WHERE {where}")).scalar() or 0)
    finally:
        engine.dispose()


def test_delivered_messages_of_the_sqlite_broker_are_purged(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.broker_url == f"sqla+sqlite:///{tmp_path}/broker.db"
    assert purge_delivered(settings) == 0  # no table yet: nothing to do, no error
    with Connection(settings.broker_url) as conn:
        queue = conn.SimpleQueue(GPU_QUEUE)
        for i in range(3):
            queue.put({"i": i})
        queue.put({"i": "still queued"})
        for _ in range(3):
            queue.get(timeout=5).ack()
        queue.close()
    db = tmp_path / "broker.db"
    assert _count(db, "visible = 0") == 3  # kombu keeps delivered messages forever
    assert purge_delivered(settings) == 3
    assert _count(db, "visible = 0") == 0
    assert _count(db, "visible = 1") == 1  # the undelivered one is kept


def test_enqueue_to_a_broker_that_is_down_reports_failure_quickly(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    app = make_celery(settings)
    started = time.monotonic()
    assert enqueue_job(app, "some-job-id") is False
    assert time.monotonic() - started < 10
    reason = broker_reachable(app, timeout=1)
    assert reason is not None and "Error" in reason


def test_submission_is_kept_when_the_broker_is_down(tmp_path: Path) -> None:
    """Row first, message second: the job is stored and answered 202; the sweeper enqueues it
    once the broker is back."""
    from fastapi.testclient import TestClient
    from sqlalchemy import func, select

    from api.app import create_app
    from services.keys import create_key
    from shared.db.engine import make_engine, make_sessionmaker
    from shared.db.migrate import upgrade
    from shared.db.models import Job
    from tests.ingest.builders import encode, noise_rgb

    settings = Settings(data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    upgrade(settings.database_url)
    sm = make_sessionmaker(make_engine(settings.database_url))
    with sm.begin() as s:
        key = create_key(s, name="t", role="submitter").secret
    client = TestClient(create_app(settings))
    r = client.post("/v1/jobs", files={"file": ("a.png", encode(noise_rgb(), "PNG"))},
                    headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 202 and r.json()["status"] == "queued"
    with sm() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1
    ready = client.get("/readyz")
    assert ready.status_code == 503 and "broker" in ready.json()["detail"]


def test_a_message_sent_by_a_worker_carries_no_time_limit_of_its_own(tmp_path: Path) -> None:
    """A worker re-enqueues jobs (a retry, the sweeper). Its message must not carry that
    worker's time limit: the one that takes it applies its own configuration."""
    from services.queue import TASK_RUN_JOB

    settings = Settings(data_dir=tmp_path, hard_time_limit_seconds=5)
    app = make_celery(settings)

    @app.task(name=TASK_RUN_JOB, time_limit=65)
    def run_job(job_id: str) -> None:  # registered here, as in a worker process, with a limit
        raise AssertionError("only sent, never run")

    assert app.tasks[TASK_RUN_JOB].time_limit == 65  # what Celery would otherwise put in the message
    assert enqueue_job(app, "job-1") is True
    with Connection(settings.broker_url) as conn:
        message = conn.SimpleQueue(GPU_QUEUE).get(timeout=5)
        assert message.headers["task"] == TASK_RUN_JOB and message.headers["argsrepr"] == "['job-1']"
        assert message.headers["timelimit"] in ([None, None], (None, None)), message.headers
        message.ack()


def test_a_worker_keeps_trying_a_broker_that_is_away_for_long(tmp_path: Path) -> None:
    """The call Celery's consumer makes when it lost the broker (``Consumer.ensure_connected``:
    ``ensure_connection`` with ``broker_connection_max_retries``), kombu's back-off cut to
    nothing so that 150 refused tries take a moment instead of an hour: with Celery's default
    of 100 tries the worker would exit with "Unrecoverable error" (seen by hand). Here it is
    still trying at the 150th, and connects once Redis is there."""
    redis_server = PrivateRedis(tmp_path)
    settings = Settings(data_dir=tmp_path, broker_url=redis_server.url)
    app = make_celery(settings)
    tries: list[Exception] = []

    def refused(exc: Exception, _interval: float) -> None:
        tries.append(exc)
        if len(tries) == 150:
            redis_server.start()

    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(refused, app.conf.broker_connection_max_retries,
                                   interval_start=0, interval_step=0, interval_max=0)
            assert conn.connected
            assert len(tries) == 150
    finally:
        redis_server.stop()
