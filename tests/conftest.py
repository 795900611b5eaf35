"""Shared fixtures: repository paths and the real-data folder (../shared/data)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT test data not found at {SHARED_DATA} (clone with ../shared beside the repo)")
    return SHARED_DATA
