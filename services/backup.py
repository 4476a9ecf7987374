"""A consistent copy of what the service cannot rebuild: the database, and the key file that
opens the webhook secrets sealed in it. Images, results, reviews, keys and the audit trail all
live in the database; the broker's messages do not need keeping (the sweeper re-sends queued
jobs) and the model is an artifact with its own source.

SQLite (the embedded default) is copied with SQLite's online backup API: a snapshot of one
moment, taken while the service runs and writes. A plain ``cp`` of a database in WAL mode
misses the pages still in ``fada.db-wal`` and may catch a half-written file. PostgreSQL is
dumped by ``pg_dump --format=custom`` (restored with ``pg_restore``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from services.notify.sealing import KEY_FILE, key_file
from shared.db.migrate import current_revision
from shared.settings import Settings

MANIFEST = "backup.json"
SQLITE_COPY = "fada.db"
POSTGRES_DUMP = "fada.dump"


class BackupError(Exception):
    """The backup could not be made; its message says why and what to do."""


@dataclass
class Backup:
    database: str  # "sqlite" or "postgresql"
    revision: str | None  # the schema's Alembic revision
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    notes: list[str] = field(default_factory=list)


def make_backup(settings: Settings, folder: Path) -> Backup:
    """Write the backup into ``folder``, which must be new or empty, and its manifest last (a
    folder without ``backup.json`` is an unfinished backup)."""
    if folder.exists() and any(folder.iterdir()):
        raise BackupError(f"{folder} is not empty: give a new folder for each backup")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # images and reports: patient data
    url = make_url(settings.database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        _copy_sqlite(url, folder / SQLITE_COPY)
        names = [SQLITE_COPY]
        revision = current_revision(f"sqlite:///{folder / SQLITE_COPY}")  # the copy's own
    elif backend == "postgresql":
        revision = current_revision(url)
        _dump_postgres(url, folder / POSTGRES_DUMP)
        names = [POSTGRES_DUMP]
    else:
        raise BackupError(f"no backup method for a {backend} database")
    backup = Backup(backend, revision)
    (folder / names[0]).chmod(0o600)
    names += _copy_secrets_key(settings, folder, backup.notes)
    backup.files = {name: sha256_of(folder / name) for name in names}
    manifest = {"created_at": datetime.now(UTC).isoformat(), "database": backend, "revision": backup.revision,
                "files": backup.files, "notes": backup.notes}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return backup


def _copy_sqlite(url: URL, target: Path) -> None:
    source_path = url.database
    if not source_path or source_path == ":memory:" or not Path(source_path).exists():
        raise BackupError(f"no SQLite database file at {source_path!r}")
    source = sqlite3.connect(source_path, timeout=30)
    copy = sqlite3.connect(target)
    try:
        source.backup(copy)  # one step: one read transaction, so one moment; writers go on (WAL)
        checked = copy.execute("PRAGMA integrity_check").fetchone()
    finally:
        copy.close()
        source.close()
    if checked != ("ok",):
        raise BackupError(f"the copy failed SQLite's integrity check: {checked}")


def _dump_postgres(url: URL, target: Path) -> None:
    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise BackupError("pg_dump is not installed here: install the PostgreSQL client of the server's major "
                          "version, or run pg_dump --format=custom where the database runs")
    libpq, env = libpq_target(url)
    done = subprocess.run([pg_dump, "--format=custom", "--no-owner", "--file", str(target), libpq],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        target.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {done.stderr.strip()[-1000:]}")


def libpq_target(url: URL) -> tuple[str, dict[str, str]]:
    """The database as pg_dump and pg_restore take it, and their environment: the password by
    environment, not on a command line that `ps` shows."""
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    return url.set(drivername="postgresql", password=None).render_as_string(hide_password=False), env


def _copy_secrets_key(settings: Settings, folder: Path, notes: list[str]) -> list[str]:
    """The key file that opens the sealed webhook secrets, if the service uses one; without it
    a restored service cannot sign webhooks until every secret is set again."""
    source = key_file(settings)
    if source is None:
        notes.append("webhook secrets are sealed with FADA_SECRETS_KEY, which is not in this backup: keep it "
                     "safe, apart from the backup; the restored service needs it")
        return []
    if not source.exists():
        notes.append("no webhook secret key file: no webhook secret was ever sealed")
        return []
    target = folder / KEY_FILE
    shutil.copyfile(source, target)
    target.chmod(0o600)
    notes.append(f"{KEY_FILE} opens the webhook secrets in the database: whoever holds both can sign as the "
                 "service; keep the backup as safe as the database")
    return [KEY_FILE]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
