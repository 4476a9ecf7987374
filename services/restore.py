"""Putting a ``fada backup`` folder back: into the database FADA_DATABASE_URL names, which must
not exist yet (SQLite) or be empty (PostgreSQL), with the key file into the data folder, then
migrated to this version's schema. Everything is checked before anything is written: the
manifest, every file's sha256, the kind of database, a key file already in place."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from services.backup import MANIFEST, POSTGRES_DUMP, SQLITE_COPY, libpq_target, sha256_of
from services.jobs import mark_queued_unpublished
from services.notify.sealing import KEY_FILE, key_file
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import current_revision, upgrade
from shared.settings import Settings


class RestoreError(Exception):
    """The backup cannot be restored here; its message says why and what to do."""


@dataclass
class Restored:
    database: str
    backup_revision: str | None  # the schema the backup was taken at
    revision: str | None  # the schema now, after migrating
    key_file: Path | None  # where the backup's key file was put, if it was
    notes: list[str] = field(default_factory=list)


def restore_backup(settings: Settings, folder: Path) -> Restored:
    manifest = _checked_manifest(folder)
    url = make_url(settings.database_url)
    backend = url.get_backend_name()
    if manifest.get("database") != backend:
        raise RestoreError(f"the backup is of a {manifest.get('database')} database and FADA_DATABASE_URL names a "
                           f"{backend} one")
    notes: list[str] = []
    key_target = _key_target(settings, folder, manifest, notes)
    if backend == "sqlite":
        _restore_sqlite(url, folder / SQLITE_COPY)
    else:
        _restore_postgres(url, folder / POSTGRES_DUMP)
    if key_target is not None:
        key_target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / KEY_FILE, key_target)
        key_target.chmod(0o600)
    upgrade(url)
    resent = _mark_queued_unpublished(url)
    if resent:
        notes.append(f"{resent} queued job(s) marked for the sweeper: their messages were in the old broker, so "
                     "the first worker's first pass sends them again")
    return Restored(backend, manifest.get("revision"), current_revision(url), key_target, notes)


def _mark_queued_unpublished(url: URL) -> int:
    """The backup's queued jobs had their messages in a broker that is not part of it: marked
    ``unpublished``, the sweeper's next pass sends them, instead of after its grace period.
    (Running ones come back when their leases, long expired, are swept.)"""
    engine = make_engine(url, poolclass=NullPool)
    try:
        with make_sessionmaker(engine).begin() as session:
            return mark_queued_unpublished(session)
    finally:
        engine.dispose()


def _checked_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise RestoreError(f"no {MANIFEST} in {folder}: not a backup, or one that did not finish")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
        files: dict[str, str] = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RestoreError(f"{path} is not a backup manifest: {exc}") from None
    for name, digest in files.items():
        if Path(name).name != name or not (folder / name).is_file():
            raise RestoreError(f"{name}, listed in {MANIFEST}, is not in {folder}")
        if sha256_of(folder / name) != digest:
            raise RestoreError(f"{folder / name} does not match its sha256 in {MANIFEST}: the backup is damaged")
    return manifest


def _key_target(settings: Settings, folder: Path, manifest: dict[str, Any], notes: list[str]) -> Path | None:
    """Where the backup's key file goes (None: nowhere), refusing to replace a different one:
    the secrets sealed with that one would no longer open."""
    if KEY_FILE not in manifest["files"]:
        return None
    target = key_file(settings)
    if target is None:
        notes.append(f"the backup's {KEY_FILE} was not put back: FADA_SECRETS_KEY is set, and the webhook secrets "
                     "were sealed with the key file; unset it, or give each key a new secret "
                     "(fada keys webhook --rotate-secret)")
        return None
    if target.exists():
        if target.read_bytes() == (folder / KEY_FILE).read_bytes():
            return None
        raise RestoreError(f"a different key file is at {target}: move it away first (the secrets sealed with it "
                           "would no longer open)")
    return target


def _restore_sqlite(url: URL, copy: Path) -> None:
    if not url.database or url.database == ":memory:":
        raise RestoreError("FADA_DATABASE_URL names no SQLite file to restore into")
    target = Path(url.database)
    taken = [p for p in (target, target.with_name(target.name + "-wal")) if p.exists()]
    if taken:
        raise RestoreError(f"{taken[0]} exists: stop the service and move the database (and its -wal and -shm "
                           "files) away first")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(copy, target)
    target.chmod(0o600)


def _restore_postgres(url: URL, dump: Path) -> None:
    pg_restore = shutil.which("pg_restore")
    if pg_restore is None:
        raise RestoreError("pg_restore is not installed here: install the PostgreSQL client of the server's major "
                           "version, or run pg_restore --no-owner where the database runs")
    engine = make_engine(url, poolclass=NullPool)
    try:
        tables = inspect(engine).get_table_names()
    finally:
        engine.dispose()
    if tables:
        raise RestoreError(f"the database {url.database} has tables ({len(tables)}): restore into a new, empty one")
    libpq, env = libpq_target(url)
    done = subprocess.run([pg_restore, "--no-owner", "--exit-on-error", "--dbname", libpq, str(dump)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RestoreError(f"pg_restore failed: {done.stderr.strip()[-1000:]}")
