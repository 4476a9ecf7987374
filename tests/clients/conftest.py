"""Fixtures for the client tests: the API tests' app, keys and real uvicorn server (from
tests/api/conftest.py), on SQLite only (the client sees HTTP; the backend is tested elsewhere)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api import conftest as api
from tests.api.conftest import AppFactory, Serve

# The API tests' fixtures, re-exported under their names (pytest finds fixtures by attribute).
_sqlite_template = api._sqlite_template
sm = api.sm
keys = api.keys
broker_url = api.broker_url
make_app = api.make_app
serve = api.serve


@pytest.fixture
def db_url(_sqlite_template: Path, tmp_path: Path) -> str:
    """SQLite only: a copy of the migrated template."""
    return api._copy_sqlite(_sqlite_template, tmp_path / "fada.db")


@pytest.fixture
def url(make_app: AppFactory, serve: Serve) -> str:
    """The base URL of the real app served by uvicorn on loopback (no worker: jobs stay queued
    unless a test stores a result itself, e.g. with ``tests.api.helpers.succeed_job``)."""
    return serve(make_app())
