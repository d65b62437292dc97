"""Shared fixtures of the study tests: one model cache and one finished small study per session.

Every study here uses the smoke study's inline ladder, so the ladder is pretrained once per
session (in a temporary cache) and reused.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from study_helpers import SESSION_CHANGES, cli, write_study


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A model cache for the session (the ladder of the smoke study is built in it once)."""
    path = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("FTSCALE_CACHE", str(path))  # in-process runs (the Ray test) read it
    yield path
    patch.undo()


@pytest.fixture(scope="session")
def finished_study(tmp_path_factory, cache_dir):
    """(study file, study dir, first run's CLI result) of a study run once per session."""
    root = tmp_path_factory.mktemp("study")
    path = write_study(root / "teststudy.toml", SESSION_CHANGES, pet_sizes={"lora": [2, 4, 8]})
    result = cli(["study", "run", str(path)], root, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return path, root / "teststudy", result
