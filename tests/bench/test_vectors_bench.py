"""``legion bench vectors`` at a tiny size: every store row is there and exact search
finds the exact neighbours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.acceptance.conftest import legion


def test_bench_vectors_writes_a_row_per_store(tmp_path: Path) -> None:
    r = legion(
        "bench",
        "vectors",
        "--vectors",
        "300",
        "--dims",
        "16",
        "--queries",
        "5",
        "--out",
        str(tmp_path),
        "--no-plots",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "vectors.json").read_text())
    stores = {row["store"]: row for row in data["rows"]}
    assert set(stores) >= {"numpy (brute force)", "SQLite (sqlite-vec)"}
    assert stores["SQLite (sqlite-vec)"]["recall"] == 1.0
    assert all(row["p95_ms"] >= row["p50_ms"] > 0 for row in data["rows"])
    # Process memory is reported per store: the peak is at least what the process started at.
    assert all(row["rss_peak_mb"] >= row["rss_growth_mb"] >= 0 for row in data["rows"])
    assert stores["SQLite (sqlite-vec)"]["size_mb"] > 0
    assert "PostgreSQL (pgvector HNSW)" in stores, data["notes"]


def test_a_private_server_that_fails_to_start_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Ctrl-C while pgserver ran initdb: initdb failed, pgserver raised its failure (a
    # traceback to the user) and its folder stayed in the temporary directory.
    import asyncio
    import importlib
    import subprocess
    import tempfile

    from legion.bench import vectors

    made: list[Path] = []

    class Pgserver:  # (the boundary: a third-party package that starts PostgreSQL)
        @staticmethod
        def get_server(folder: str, cleanup_mode: str) -> object:
            Path(folder).mkdir()
            made.append(Path(folder))
            raise subprocess.CalledProcessError(1, ["initdb", "-D", folder])

    real = importlib.import_module
    monkeypatch.setattr(
        importlib, "import_module", lambda name: Pgserver if name == "pgserver" else real(name)
    )
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    async def start() -> None:
        async with vectors._pgvector("", [], {}):
            pass

    with pytest.raises(RuntimeError, match="could not start a private PostgreSQL server"):
        asyncio.run(start())
    assert made and not made[0].exists()
