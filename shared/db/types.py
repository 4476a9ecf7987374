"""Column types that behave the same on PostgreSQL and SQLite.

- Ids are UUID strings in ``String(36)`` columns: the contract's ids are opaque strings, the
  value reads the same in both databases, in logs and in raw SQL, and no driver converts it.
- ``JSONDocument`` is JSONB on PostgreSQL and JSON (text) on SQLite; Python ``None`` is stored
  as SQL NULL, so ``IS NULL`` finds it.
- ``UTCDateTime`` is ``timestamp with time zone`` on PostgreSQL; on SQLite, which keeps no
  offset, values are stored as UTC and read back timezone-aware (UTC) on both.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Enum, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

ID_LENGTH = 36
ENUM_LENGTH = 32


def new_id() -> str:
    """A new random id (UUID4, canonical text form, 36 characters)."""
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


def id_type() -> String:
    return String(ID_LENGTH)


JSONDocument: TypeEngine[Any] = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime in, an aware UTC datetime out, on every database.

    A naive datetime is refused on the way in: it is ambiguous in a hospital that spans time
    zones, and silently taking it as UTC hides bugs.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware datetime (UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def str_enum(enum_cls: type[enum.Enum], name: str) -> Enum:
    """A VARCHAR + CHECK enum (no native PostgreSQL type), storing the members' values.

    ``name`` names the CHECK constraint (``ck_<table>_<name>`` through the naming convention).
    Use a fresh instance per column: each column gets its own constraint. The column is
    VARCHAR(32) whatever the values, so adding a value later changes only the CHECK.
    """
    too_long = [m.value for m in enum_cls if len(str(m.value)) > ENUM_LENGTH]
    if too_long:
        raise ValueError(f"enum values longer than {ENUM_LENGTH}: {too_long}")
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        validate_strings=True,
        length=ENUM_LENGTH,
        values_callable=lambda cls: [str(m.value) for m in cls],
    )
