"""Alembic environment for FADA Serve.

The URL, first found wins: a connection or URL handed over by ``shared.db.migrate`` (in
``config.attributes``), ``-x url=...``, ``sqlalchemy.url`` in alembic.ini, then
``FADA_DATABASE_URL`` through ``shared.settings``.

Migrations run in one transaction on both databases (SQLite has transactional DDL too), in
batch mode on SQLite, with foreign keys off on SQLite while tables are rebuilt (checked
afterwards), and under an advisory lock on PostgreSQL so that two processes starting together
do not migrate at once.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from shared.db.engine import make_engine
from shared.db.migrate import include_name
from shared.db.models import Base
from shared.settings import Settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

# Any 64-bit constant; the same one in every process that migrates this database.
_PG_MIGRATION_LOCK = 0x46414441  # "FADA"


def _url() -> str | URL:
    url: str | URL | None = config.attributes.get("url")
    if url:
        return url
    x_url = context.get_x_argument(as_dictionary=True).get("url")
    if x_url:
        return x_url
    ini_url = config.get_main_option("sqlalchemy.url")
    if ini_url:
        return ini_url
    return Settings().database_url


def _configure(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=sqlite,
        transactional_ddl=True,
        compare_type=True,
        compare_server_default=True,
        include_name=include_name,
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        context.run_migrations()
        if connection.dialect.name == "sqlite":
            bad = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if bad:
                raise RuntimeError(f"foreign key violations after migrating: {bad[:10]}")


def run_migrations_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=str(url).startswith("sqlite"),
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url(), poolclass=NullPool, sqlite_foreign_keys=False)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
