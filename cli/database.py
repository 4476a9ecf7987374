"""The database session of the commands that work on it directly (``fada keys``, ``fada
migrate``, ``fada images``), from the same settings as the service."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def open_session() -> Session:
    from shared.db.engine import engine_from_settings, make_sessionmaker
    from shared.settings import Settings

    return make_sessionmaker(engine_from_settings(Settings()))()
