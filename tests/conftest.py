"""Shared fixtures: real stores on real files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from legion.store import SQLiteStore, Store


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'legion.db'}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = SQLiteStore(tmp_path / "store.db")
    await s.open()
    yield s
    await s.aclose()
