"""Fixtures for the review tests: the API tests' databases (both backends, migrated once per
session, emptied per test), keys and app, plus a second reviewer and job builders."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from services.keys import create_key
from shared.db.models import Role
from tests.api.conftest import (  # noqa: F401  (fixtures)
    Key,
    Keys,
    _postgres_migrated,
    _sqlite_template,
    broker_url,
    client,
    db_url,
    keys,
    make_app,
    make_client,
    sm,
)

from .helpers import Jobs


@pytest.fixture
def second_reviewer(sm: sessionmaker[Session]) -> Key:  # noqa: F811
    with sm.begin() as session:
        new = create_key(session, name="second reviewer", role=Role.reviewer)
        return Key(id=new.key.id, secret=new.secret, role=Role.reviewer)


@pytest.fixture
def jobs(sm: sessionmaker[Session], keys: Keys) -> Jobs:  # noqa: F811
    """Builds jobs in the states reviews care about, as the gateway and a worker would."""
    return Jobs(sm, submitter_id=keys.submitter.id)


