"""How far an unfiltered PostgreSQL vector search looks (pgvector's ``hnsw.ef_search``):
100 candidates unless ``LEGION_VECTORS_EF_SEARCH`` says otherwise, never fewer than k."""

from __future__ import annotations

import pytest

from legion.errors import VectorError
from legion.vectors.postgres import ef_search


def test_the_default_and_k_above_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEGION_VECTORS_EF_SEARCH", raising=False)
    assert (ef_search(10), ef_search(400)) == (100, 400)


def test_the_environment_sets_it_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEGION_VECTORS_EF_SEARCH", "400")
    assert ef_search(10) == 400
    monkeypatch.setenv("LEGION_VECTORS_EF_SEARCH", "5000")
    assert ef_search(10) == 1000
    monkeypatch.setenv("LEGION_VECTORS_EF_SEARCH", "0")
    assert ef_search(10) == 10
    monkeypatch.setenv("LEGION_VECTORS_EF_SEARCH", "lots")
    with pytest.raises(VectorError, match="not a whole number"):
        ef_search(10)
