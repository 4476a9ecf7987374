"""Engines and sessions from a URL, set up the same way for the API, workers, CLI and tests.

SQLite (the embedded default): WAL journal, foreign keys on, a busy timeout, and real
transactions: Python's sqlite3 module by default runs SELECTs outside any transaction and
breaks SAVEPOINT; here every transaction starts with an explicit ``BEGIN`` (``IMMEDIATE`` by
default: it takes the write lock at the start, so a read-then-write transaction such as
claiming a job waits for the busy timeout instead of failing with "database is locked";
keep transactions short, never open across a model call).

PostgreSQL: ``pool_pre_ping`` so a restarted server or a dropped connection costs a reconnect,
not an error; a connect timeout so a server that does not answer (a host gone from the network)
fails a request in seconds instead of the operating system's minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from shared.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 15_000
POSTGRES_CONNECT_TIMEOUT_S = 10
SqliteBegin = Literal["DEFERRED", "IMMEDIATE", "EXCLUSIVE"]


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_is_memory(url: URL) -> bool:
    db = url.database or ""
    return db in ("", ":memory:") or db.startswith("file::memory:") or url.query.get("mode") == "memory"


def make_engine(
    url: str | URL,
    *,
    echo: bool = False,
    sqlite_begin: SqliteBegin = "IMMEDIATE",
    sqlite_foreign_keys: bool = True,
    **kwargs: Any,
) -> Engine:
    """An engine for ``url``. Extra keyword arguments go to :func:`sqlalchemy.create_engine`.

    For a SQLite file, its folder is created if missing.
    """
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        return _sqlite_engine(u, echo=echo, begin=sqlite_begin, foreign_keys=sqlite_foreign_keys, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    if u.get_backend_name() == "postgresql" and "connect_timeout" not in u.query:
        kwargs["connect_args"] = {"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S, **kwargs.get("connect_args", {})}
    return create_engine(u, echo=echo, **kwargs)


def _sqlite_engine(u: URL, *, echo: bool, begin: SqliteBegin, foreign_keys: bool, **kwargs: Any) -> Engine:
    memory = _sqlite_is_memory(u)
    connect_args: dict[str, Any] = dict(kwargs.pop("connect_args", {}))
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    if memory:
        # One connection for all: each new connection to :memory: would be a new, empty database.
        kwargs.setdefault("poolclass", StaticPool)
    elif u.database:
        Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(u, echo=echo, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, say where transactions begin (see "begin" below).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA foreign_keys={'ON' if foreign_keys else 'OFF'}")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(f"BEGIN {begin}")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (handy for building responses)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def engine_from_settings(settings: Settings, **kwargs: Any) -> Engine:
    return make_engine(settings.database_url, echo=settings.database_echo, **kwargs)
