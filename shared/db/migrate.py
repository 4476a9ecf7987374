"""Schema migrations from code (``fada migrate``, tests), through Alembic's API.

The scripts live in ``migrations/`` at the top of the checkout (the service runs from a
checkout installed with ``pip install -e .``); ``FADA_MIGRATIONS_DIR`` points elsewhere.

    from shared.db.migrate import upgrade, downgrade
    upgrade("postgresql+psycopg://fada@db/fada")      # to the newest revision
    downgrade("sqlite:///var/fada.db", "base")         # drop everything
    upgrade(None)                                      # FADA_DATABASE_URL / settings
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from shared.db.engine import make_engine
from shared.db.models import Base
from shared.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]

# Tables that may share the database but are not ours (a Celery broker or result backend on
# the same URL): comparisons and autogenerate leave them alone.
FOREIGN_TABLE_PREFIXES = ("kombu_", "celery_")


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic ``include_name`` hook: skip tables that belong to others."""
    return not (type_ == "table" and name is not None and name.startswith(FOREIGN_TABLE_PREFIXES))


def migrations_dir() -> Path:
    env = os.environ.get("FADA_MIGRATIONS_DIR")
    path = Path(env) if env else REPO_ROOT / "migrations"
    if not (path / "env.py").is_file():
        raise FileNotFoundError(
            f"no Alembic scripts at {path}: run from a checkout (pip install -e .) or set FADA_MIGRATIONS_DIR"
        )
    return path


def alembic_config(url: str | URL | None = None, *, connection: Connection | None = None) -> Config:
    """An Alembic config that needs no alembic.ini. The URL (or an open connection) travels
    in ``config.attributes``, not through the ini parser, so '%' in a password is safe."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["configure_logger"] = False
    cfg.attributes["url"] = url if url is not None else Settings().database_url
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(url: str | URL | None = None, revision: str = "head") -> None:
    """Migrate the database at ``url`` (default: settings) up to ``revision``."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | URL | None, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``"base"``: drop every table)."""
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(url: str | URL | None = None) -> str | None:
    """The revision the database is at; None for an empty (never migrated) database."""
    engine = make_engine(url if url is not None else Settings().database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def schema_diff(url: str | URL | None = None) -> list[Any]:
    """Differences between the ORM models and the database's schema (empty when they match),
    as :func:`alembic.autogenerate.compare_metadata` reports them."""
    engine = make_engine(url if url is not None else Settings().database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True, "include_name": include_name}
            )
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()
