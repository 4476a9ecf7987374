"""Fixtures for the HTTP API tests: the real app (``create_app``) over a migrated database,
on PostgreSQL and on SQLite (``db_url``), with an API key per role.

Speed: migrating a fresh PostgreSQL database per test costs about a second, so each backend is
migrated ONCE per session (PostgreSQL: one throwaway database from ``fixtures_db``; SQLite: one
template file) and every test starts from empty tables (PostgreSQL: DELETE; SQLite: a copy
of the migrated template in the test's tmp_path). The broker is an embedded SQLite broker in a
temporary folder of the session (a fresh one per test costs its table creation on the first
publish); no worker runs, so accepted jobs stay ``queued``.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from api.app import create_app
from services.keys import create_key
from shared.db.engine import make_engine, make_sessionmaker
from shared.db.migrate import upgrade
from shared.db.models import Base, Role
from shared.settings import Settings
from tests.fixtures_db import throwaway_postgres_database
from tests.orthanc import orthanc  # noqa: F401  (a fixture: a real PACS for the DICOMweb tests)
from tests.worker.processes import free_port

# kombu's SQLAlchemy transport (the embedded broker) uses a loader option SQLAlchemy deprecates.
_KOMBU_WARNING = "ignore:The ``noload`` loader strategy is deprecated:sqlalchemy.exc.SADeprecationWarning"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.filterwarnings(_KOMBU_WARNING))


# --- databases: migrated once per session, emptied per test ----------------------------------


@pytest.fixture(scope="session")
def _postgres_migrated() -> Iterator[str]:
    with throwaway_postgres_database(prefix="fada_test_api_") as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "fada.db"
    upgrade(f"sqlite:///{path}")
    return path


def _empty_tables(url: str) -> None:
    """DELETE every row, children first (much faster than TRUNCATE on tables this small)."""
    engine = make_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
    finally:
        engine.dispose()


def _copy_sqlite(template: Path, target: Path) -> str:
    for suffix in ("", "-wal", "-shm"):
        source = template.with_name(template.name + suffix)
        if source.exists():
            shutil.copyfile(source, target.with_name(target.name + suffix))
    return f"sqlite:///{target}"


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("_postgres_migrated")
        _empty_tables(url)
        return url
    return _copy_sqlite(request.getfixturevalue("_sqlite_template"), tmp_path / "fada.db")


@pytest.fixture
def sqlite_db_url(_sqlite_template: Path, tmp_path: Path) -> str:
    """SQLite only (for the slower, property-based checks)."""
    return _copy_sqlite(_sqlite_template, tmp_path / "fada.db")


# --- direct database access for assertions ---------------------------------------------------


def open_sessions(url: str) -> Generator[sessionmaker[Session]]:
    engine: Engine = make_engine(url)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@pytest.fixture
def sm(db_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on the test's database, separate from the app's (for seeding and counting)."""
    yield from open_sessions(db_url)


# --- API keys -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    id: str
    secret: str
    role: Role

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


@dataclass(frozen=True)
class Keys:
    submitter: Key
    other_submitter: Key
    reviewer: Key
    qa: Key
    admin: Key


def make_keys(sm: sessionmaker[Session]) -> Keys:
    made: dict[str, Key] = {}
    with sm.begin() as session:
        for name, role in (("submitter", Role.submitter), ("other_submitter", Role.submitter),
                           ("reviewer", Role.reviewer), ("qa", Role.qa), ("admin", Role.admin)):
            new = create_key(session, name=name, role=role)
            made[name] = Key(id=new.key.id, secret=new.secret, role=role)
    return Keys(**made)


@pytest.fixture
def keys(sm: sessionmaker[Session]) -> Keys:
    return make_keys(sm)


# --- the app --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqla+sqlite:///{tmp_path_factory.mktemp('broker') / 'broker.db'}"


def make_settings(db_url: str, tmp_path: Path, broker_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "database_url": db_url,
        "broker_url": broker_url,
        "max_body_bytes": 2 * 1024 * 1024,
        **overrides,
    }
    return Settings(**values)


def close_app(app: FastAPI) -> None:
    ctx = app.state.ctx
    ctx.sm.kw["bind"].dispose()
    ctx.celery.close()


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def make_app(db_url: str, tmp_path: Path, broker_url: str) -> Iterator[AppFactory]:
    """``make_app(**settings_overrides)``: a fresh app on the test's database."""
    apps: list[FastAPI] = []

    def _make(**overrides: Any) -> FastAPI:
        app = create_app(make_settings(db_url, tmp_path, **{"broker_url": broker_url, **overrides}))
        apps.append(app)
        return app

    yield _make
    for app in apps:
        close_app(app)


ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(make_app: AppFactory) -> Iterator[ClientFactory]:
    """``make_client(**settings_overrides)``: a TestClient on a fresh app (no exception is
    re-raised: a server error must show as a 500 answer, which the tests then catch)."""
    clients: list[TestClient] = []

    def _make(**overrides: Any) -> TestClient:
        client = TestClient(make_app(**overrides), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield _make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


# --- a real server (for what TestClient cannot do: chunked bodies, concurrent requests) ---


Serve = Callable[[FastAPI], str]


def run_uvicorn(app: FastAPI, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    """The app in uvicorn on ``port`` in a thread, once it is listening; stop it by setting
    the server's ``should_exit`` and joining the thread."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    return server, thread


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(app)`` runs the app in uvicorn on a free port in a thread; returns its base URL."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def _serve(app: FastAPI) -> str:
        port = free_port()
        running.append(run_uvicorn(app, port))
        return f"http://127.0.0.1:{port}"

    yield _serve
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)
