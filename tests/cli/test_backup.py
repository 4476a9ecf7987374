"""`fada backup` and `fada restore` as an operator runs them: SQLite copied while jobs are
being written and restored into a new data folder, PostgreSQL dumped and restored into a new
database; each restored copy serves the jobs and keys it holds and opens its webhook secrets.
A damaged, mismatched or misplaced restore is refused before anything is written."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from api.app import create_app
from cli.main import app
from services.ingest import decode_image
from services.jobs import submit_job
from services.keys import authenticate, configure_webhook, create_key
from services.notify.sealing import secret_box
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import current_revision, head_revision, upgrade
from shared.db.models import ApiKey, Job
from shared.settings import Settings
from tests.fixtures_db import throwaway_postgres_database
from tests.ingest.builders import encode, noise_rgb

runner = CliRunner()


def _jobs(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            return set(session.scalars(select(Job.id)))
    finally:
        engine.dispose()


def _seed(url: str, data_dir: Path, jobs: int) -> tuple[str, str, str]:
    """A key with a webhook (its secret sealed), and ``jobs`` jobs. Returns (key id, secret, webhook secret)."""
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine).begin() as session:
            key = create_key(session, name="pacs", role="admin")
            _, webhook_secret = configure_webhook(
                session, key.key.id, url="http://127.0.0.1:9/hooks", allowed_hosts=["127.0.0.1"],
                box=secret_box(Settings(database_url=url, data_dir=data_dir), create=True))
            for seed in range(jobs):
                submit_job(session, decoded=decode_image(encode(noise_rgb(40, 30, seed=seed), "PNG")),
                           original_size=1, api_key_id=key.key.id)
    finally:
        engine.dispose()
    assert webhook_secret is not None
    return key.key.id, key.secret, webhook_secret


def test_a_sqlite_backup_taken_while_jobs_are_written_restores_to_a_working_service(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    url = f"sqlite:///{live}/fada.db"
    upgrade(url)
    key_id, secret, webhook_secret = _seed(url, live, jobs=3)

    stop, written = threading.Event(), [0]

    def keep_writing() -> None:  # a gateway taking submissions meanwhile
        engine = make_engine(url)
        sm = make_sessionmaker(engine)
        while not stop.is_set():
            with sm.begin() as session:
                submit_job(session, decoded=decode_image(encode(noise_rgb(40, 30, seed=written[0]), "PNG")),
                           original_size=1, api_key_id=key_id)
            written[0] += 1
        engine.dispose()

    writer = threading.Thread(target=keep_writing)
    writer.start()
    folder = tmp_path / "backup-1"
    try:
        done = runner.invoke(app, ["backup", str(folder)], env={"FADA_DATABASE_URL": url, "FADA_DATA_DIR": str(live),
                                                                "FADA_SECRETS_KEY": ""})
    finally:
        stop.set()
        writer.join(30)
    assert done.exit_code == 0, done.output
    assert written[0] > 0, "nothing was written during the backup"
    manifest = json.loads((folder / "backup.json").read_text())
    assert manifest["database"] == "sqlite" and manifest["revision"] == head_revision()
    assert set(manifest["files"]) == {"fada.db", "secrets.key"}
    # patient images and the means to sign as the service: the owner's alone
    assert [(folder / name).stat().st_mode & 0o777 for name in ("fada.db", "secrets.key")] == [0o600, 0o600]
    assert folder.stat().st_mode & 0o777 == 0o700

    restored = tmp_path / "restored"
    restored_url = f"sqlite:///{restored}/fada.db"
    target = {"FADA_DATABASE_URL": restored_url, "FADA_DATA_DIR": str(restored), "FADA_SECRETS_KEY": ""}
    put_back = runner.invoke(app, ["restore", str(folder)], env=target)
    assert put_back.exit_code == 0, put_back.output
    assert f"revision {head_revision()}, now at {head_revision()}" in put_back.output
    assert (restored / "secrets.key").stat().st_mode & 0o777 == 0o600
    assert "queued job(s) marked for the sweeper" in put_back.output
    again = runner.invoke(app, ["restore", str(folder)], env=target)  # never over a database
    assert again.exit_code == 2 and "exists: stop the service" in again.output
    kept = _jobs(restored_url)
    engine = make_engine(restored_url)
    try:  # their messages were in the old broker: the sweeper's next pass sends them
        with make_sessionmaker(engine)() as session:
            assert set(session.scalars(select(Job.id).where(Job.unpublished.is_(True)))) == kept
    finally:
        engine.dispose()
    assert len(kept) >= 3 and kept <= _jobs(url)
    settings = Settings(database_url=restored_url, data_dir=restored, secrets_key=None)
    with TestClient(create_app(settings)) as http:
        listed = http.get("/v1/jobs?limit=500", headers={"Authorization": f"Bearer {secret}"})
        assert listed.status_code == 200, listed.text
        assert {job["id"] for job in listed.json()["items"]} == kept
    engine = make_engine(restored_url)
    try:
        with make_sessionmaker(engine)() as session:
            stored = session.scalar(select(ApiKey.webhook_secret).where(ApiKey.id == key_id))
    finally:
        engine.dispose()
    assert stored is not None and secret_box(settings).open(stored) == webhook_secret


def test_a_postgres_backup_restores_with_pg_restore_into_a_new_database(tmp_path: Path) -> None:
    with throwaway_postgres_database() as postgres_url:
        _backup_and_restore_postgres(postgres_url, tmp_path)


def _backup_and_restore_postgres(postgres_url: str, tmp_path: Path) -> None:
    upgrade(postgres_url)
    _, secret, _ = _seed(postgres_url, tmp_path, jobs=2)
    folder = tmp_path / "backup"
    done = runner.invoke(app, ["backup", str(folder)], env={"FADA_DATABASE_URL": postgres_url,
                                                            "FADA_DATA_DIR": str(tmp_path / "elsewhere"),
                                                            "FADA_SECRETS_KEY": "k" * 43 + "="})
    assert done.exit_code == 0, done.output
    assert "FADA_SECRETS_KEY, which is not in this backup" in done.output
    manifest = json.loads((folder / "backup.json").read_text())
    assert set(manifest["files"]) == {"fada.dump"} and manifest["revision"] == head_revision()
    assert (folder / "fada.dump").stat().st_mode & 0o777 == 0o600
    with throwaway_postgres_database() as target:
        env = {"FADA_DATABASE_URL": target, "FADA_DATA_DIR": str(tmp_path / "restored"), "FADA_SECRETS_KEY": ""}
        put_back = runner.invoke(app, ["restore", str(folder)], env=env)
        assert put_back.exit_code == 0, put_back.output
        assert current_revision(target) == head_revision()
        again = runner.invoke(app, ["restore", str(folder)], env=env)  # never over a database in use
        assert again.exit_code == 2 and "has tables" in again.output
        assert _jobs(target) == _jobs(postgres_url) and len(_jobs(target)) == 2
        engine = make_engine(target)
        try:
            with make_sessionmaker(engine).begin() as session:
                assert authenticate(session, secret, client="127.0.0.1") is not None
                assert session.scalar(select(func.count()).select_from(ApiKey)) == 1
        finally:
            engine.dispose()


def test_backups_that_cannot_be_made_say_why_and_create_nothing(tmp_path: Path) -> None:
    used = tmp_path / "used"
    used.mkdir()
    (used / "old.txt").write_text("an earlier backup")
    url = f"sqlite:///{tmp_path}/fada.db"
    upgrade(url)
    refused = runner.invoke(app, ["backup", str(used)], env={"FADA_DATABASE_URL": url, "FADA_DATA_DIR": str(tmp_path)})
    assert refused.exit_code == 2 and "is not empty" in refused.output
    assert [p.name for p in used.iterdir()] == ["old.txt"]
    missing = tmp_path / "nowhere.db"
    absent = runner.invoke(app, ["backup", str(tmp_path / "b")],
                           env={"FADA_DATABASE_URL": f"sqlite:///{missing}", "FADA_DATA_DIR": str(tmp_path)})
    assert absent.exit_code == 2 and "no SQLite database file" in absent.output
    assert not missing.exists(), "the backup created the database it was to copy"


def test_a_damaged_or_mismatched_backup_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    url = f"sqlite:///{live}/fada.db"
    upgrade(url)
    _seed(url, live, jobs=1)
    folder = tmp_path / "backup"
    made = runner.invoke(app, ["backup", str(folder)], env={"FADA_DATABASE_URL": url, "FADA_DATA_DIR": str(live),
                                                            "FADA_SECRETS_KEY": ""})
    assert made.exit_code == 0, made.output
    restored = tmp_path / "restored"
    env = {"FADA_DATABASE_URL": f"sqlite:///{restored}/fada.db", "FADA_DATA_DIR": str(restored),
           "FADA_SECRETS_KEY": ""}

    def refused(source: Path, **overrides: str) -> str:
        done = runner.invoke(app, ["restore", str(source)], env={**env, **overrides})
        assert done.exit_code == 2, done.output
        assert not (restored / "fada.db").exists(), "a refused restore wrote the database"
        return done.output

    assert "postgresql one" in refused(folder, FADA_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/x")
    restored.mkdir()
    (restored / "secrets.key").write_bytes(b"another key")
    assert "a different key file" in refused(folder)
    (restored / "secrets.key").unlink()
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    with (damaged / "fada.db").open("r+b") as f:
        f.seek(200)
        f.write(b"\xff")
    assert "does not match its sha256" in refused(damaged)
    (damaged / "backup.json").unlink()
    assert "not a backup, or one that did not finish" in refused(damaged)
