"""Free disk space where the database writes, where this process can see it: the folder of a
SQLite database (the embedded default). A PostgreSQL server's disk is on its own host, out of
sight; its disk_full errors are answered as ``database_full`` (``shared.db.outage``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy.engine import make_url


def database_free_bytes(database_url: str) -> int | None:
    """Bytes free on the file system of the SQLite database file; None for other databases, an
    in-memory one, or a folder that does not exist."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    folder = Path(url.database).resolve().parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None
