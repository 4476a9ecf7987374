"""Engine set-up: SQLite pragmas and real transactions; settings give the default URL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.db.engine import make_engine
from shared.settings import Settings


def test_sqlite_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new' / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert (conn.execute(text("PRAGMA busy_timeout")).scalar() or 0) >= 1000
    engine.dispose()
    assert (tmp_path / "new" / "x.db").exists()


def test_sqlite_savepoint_rolls_back_only_inner(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (v INTEGER)"))
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
        inner = conn.begin_nested()
        conn.execute(text("INSERT INTO t VALUES (2)"))
        inner.rollback()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM t")).scalars().all() == [1]
    engine.dispose()


def test_sqlite_memory_is_one_database() -> None:
    engine = make_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (v INTEGER)"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 0
    engine.dispose()


def test_default_database_url_follows_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FADA_DATABASE_URL", raising=False)
    monkeypatch.setenv("FADA_DATA_DIR", str(tmp_path))
    assert Settings().database_url == f"sqlite:///{tmp_path}/fada.db"
    monkeypatch.setenv("FADA_DATABASE_URL", "postgresql+psycopg://u@h/db")
    assert Settings().database_url == "postgresql+psycopg://u@h/db"


def test_sqlite_read_then_write_transactions_serialise(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE: concurrent read-modify-write transactions wait, none fails or is lost."""
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE c (n INTEGER)"))
        conn.execute(text("INSERT INTO c VALUES (0)"))

    def bump() -> None:
        for _ in range(25):
            with engine.begin() as conn:
                n = conn.execute(text("SELECT n FROM c")).scalar_one()
                conn.execute(text("UPDATE c SET n = :n"), {"n": n + 1})

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM c")).scalar_one() == 100
    engine.dispose()
