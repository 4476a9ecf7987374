"""Fixtures for the worker tests: a real pipeline on the tiny model, a database per backend,
and helpers to run real Celery worker subprocesses against real brokers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.ingest import decode_image
from services.jobs import submit_job
from services.models.loader import LoadedModel
from services.pipeline.engine import Engine as ModelEngine
from services.pipeline.profile import Profile
from services.pipeline.runner import Pipeline
from shared.db.models import ApiKey, Job, Role
from shared.db.types import new_id
from tests.fixtures_db import postgres_url, sqlite_url  # noqa: F401
from tests.ingest.builders import encode, noise_rgb
from tests.jobs import conftest as jobs


@pytest.fixture(scope="session")
def pipeline(loaded_tiny: LoadedModel, small_profile: Profile) -> Pipeline:
    return Pipeline(ModelEngine(loaded_tiny, max_side=small_profile.image.max_side), small_profile,
                    loaded_tiny.provenance)


# The job tests' database fixtures: each test runs on PostgreSQL and on SQLite, migrated to head.
db_url, engine, sm = jobs.db_url, jobs.engine, jobs.sm


@pytest.fixture
def submit(sm: sessionmaker[Session]) -> Callable[..., str]:
    """Submit a job for a small noisy PNG in its own committed transaction; returns its id."""
    key_id = new_id()
    with sm.begin() as s:
        s.add(ApiKey(id=key_id, name="test", role=Role.submitter, key_prefix="fada_t", key_hash=new_id()))

    def _submit(data: bytes | None = None, frame: int = 0, **kwargs: Any) -> str:
        raw = data if data is not None else encode(noise_rgb(40, 30), "PNG")
        with sm.begin() as s:
            job: Job = submit_job(s, decoded=decode_image(raw, frame=frame), original_size=len(raw), api_key_id=key_id,
                                  **kwargs)
            return job.id

    return _submit
