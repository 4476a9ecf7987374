"""Database: engine and sessions (``engine``), ORM models (``models``), column types
(``types``) and schema migrations (``migrate``, over the Alembic scripts in ``migrations/``)."""

from shared.db.engine import engine_from_settings, make_engine, make_sessionmaker
from shared.db.models import Base

__all__ = ["Base", "engine_from_settings", "make_engine", "make_sessionmaker"]
