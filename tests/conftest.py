"""Shared fixtures: one tiny model per test session, and a small-budget profile for speed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from transformers.utils import logging as hf_logging

from services.models.loader import LoadedModel, load_model, source_from_dir
from services.models.tiny import build_tiny_model
from services.pipeline.profile import PROFILES_DIR, Profile, load_profile

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

# Token budgets small enough that the random model's longest possible answers stay quick;
# the grammars shrink their list and string bounds to fit (see services/pipeline/grammars.py).
SMALL_BUDGETS = {"interpret": 320, "classify": 32, "detect": 120, "keypoints": 120, "segment": 160}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-model")
    build_tiny_model(out, seed=0)
    return out


@pytest.fixture(scope="session")
def small_profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = json.loads((PROFILES_DIR / "fada-skd.json").read_text())
    data["name"], data["max_new_tokens"] = "fada-skd-small", SMALL_BUDGETS
    path = tmp_path_factory.mktemp("profiles") / "small.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="session")
def small_profile(small_profile_path: Path) -> Profile:
    return load_profile(small_profile_path)


@pytest.fixture(scope="session")
def loaded_tiny(tiny_model_dir: Path) -> Iterator[LoadedModel]:
    yield load_model(source_from_dir(tiny_model_dir), profile_name="fada-skd-small", profile_version="test")
