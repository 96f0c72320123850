"""The API's answers when the store fails: 503 with Retry-After, never a 500."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import aiohttp

from legion import Runtime
from legion.server import ServerSettings, running_server
from legion.server.keys import new_key
from legion.store import SQLiteStore
from tests.server import apps


async def test_a_locked_store_answers_503_with_retry_after(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = SQLiteStore(path, busy_timeout=0.05)
    await store.open()
    key = new_key("test", time.time())
    await store.add_api_key(key.record)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        async with (
            Runtime(store, worker=False) as rt,
            running_server(rt, apps.AGENTS, ServerSettings(port=0, key_cache_seconds=60)) as srv,
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {key.token}"}) as http,
        ):
            async with http.get(f"{srv.url}/v1/tasks") as resp:  # caches the key
                assert resp.status == 200
            other.execute("BEGIN EXCLUSIVE")
            body = {"agent": "work", "input": {"n": 1}}
            async with http.post(f"{srv.url}/v1/tasks", json=body) as resp:
                assert resp.status == 503, await resp.text()
                assert int(resp.headers["Retry-After"]) > 0
                assert "unavailable" in (await resp.json())["detail"]
            other.execute("ROLLBACK")
            async with http.post(f"{srv.url}/v1/tasks", json=body) as resp:
                assert resp.status == 201
    finally:
        other.close()
        await store.aclose()
