"""A fresh database per test, on real PostgreSQL and on SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures_db import throwaway_postgres_database


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgresql":
        with throwaway_postgres_database() as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'fada.db'}"
