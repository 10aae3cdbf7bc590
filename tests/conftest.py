"""Shared fixtures: a fresh log in a temporary data directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import nerve


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
async def log(data_dir: Path) -> AsyncIterator[nerve.Log]:
    async with nerve.open_log(data_dir) as log:
        yield log
