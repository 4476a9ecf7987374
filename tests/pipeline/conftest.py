"""Shared fixtures for the pipeline tests."""

from __future__ import annotations

import pytest

from services.pipeline.profile import MapTables, Profile, load_profile


@pytest.fixture(scope="session")
def profile() -> Profile:
    return load_profile()


@pytest.fixture(scope="session")
def tables(profile: Profile) -> MapTables:
    return profile.map
