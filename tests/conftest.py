"""Shared fixtures. Real data lives in ../shared/data beside the repository (or $HF_COLLAPSE_SHARED_DATA)."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    env = os.environ.get("HF_COLLAPSE_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not (path / "README.md").is_file():
        pytest.fail(f"shared test data not found at {path}: clone the repo beside ../shared or set HF_COLLAPSE_SHARED_DATA")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()
