"""A SQLite store's file deleted while a worker uses it: the worker stops, where it went on
writing to a file no one else could open (and the same command then ran every task
again)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import legion
from legion.errors import StoreGone, WorkerStopped

GATE: dict[str, asyncio.Event] = {}


@legion.agent(retries=0)
async def held(ctx: Any, n: int) -> int:
    await GATE["open"].wait()
    return n


async def test_a_worker_whose_sqlite_file_is_deleted_stops(tmp_path: Path) -> None:
    GATE["open"] = asyncio.Event()
    path = tmp_path / "gone.db"
    async with legion.Runtime(f"sqlite:///{path}", lease_seconds=1.5, agents=[held]) as rt:
        tasks = [await rt.submit(held, {"n": n}) for n in range(3)]
        assert rt.worker is not None
        worker = rt.worker
        for end in ("", "-wal", "-shm"):  # (as `rm` would, beside the worker)
            await asyncio.to_thread(Path(f"{path}{end}").unlink, missing_ok=True)
        await asyncio.wait_for(worker.wait_fatal(), 60)  # (a heartbeat: a third of the lease)
        assert isinstance(worker.fatal_error, StoreGone)
        assert "was deleted or replaced" in str(worker.fatal_error)
        with pytest.raises(WorkerStopped):
            await rt.result(tasks[0].id)
    GATE["open"].set()


async def test_a_store_named_relative_to_a_folder_the_process_left_is_still_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An agent's os.chdir made the relative path of `sqlite:///legion.db` name no file:
    # the worker stopped, its store "deleted", as it went on working.
    monkeypatch.chdir(tmp_path)
    async with legion.Runtime("sqlite:///here.db", lease_seconds=30, agents=[held]) as rt:
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        assert rt.worker is not None
        await rt.worker.heartbeat()  # (raised StoreGone)
        assert rt.worker.fatal_error is None
