"""``legion forget --session NAME``: a session's memory and session-scoped vectors go,
now, on both stores; a session a task still names is refused; others are untouched."""

from __future__ import annotations

import asyncio

import legion
from legion import Runtime, TaskStatus
from legion.llm import SimulatedProvider
from legion.store import store_from_url
from legion.vectors.backend import vectors_for
from tests.acceptance.conftest import legion as legion_cli
from tests.vectors.conftest import sim_client


@legion.agent(retries=0)
async def remember(ctx: legion.Context, note: str) -> str:
    await ctx.memory.set("note", note)
    await ctx.vectors("notes").add([note])
    await ctx.vectors("shared-notes", scope="shared").add([note], ids=[ctx.session])
    return note


@legion.agent(retries=0)
async def waits(ctx: legion.Context) -> None:
    await ctx.memory.set("note", "still here")
    await ctx.wait_for("never")


async def test_forget_deletes_a_sessions_memory_and_vectors_and_nothing_else(
    vec_url: str, sim: SimulatedProvider
) -> None:
    async with Runtime(vec_url, llm=sim_client(sim)) as rt:
        for who in ("alice", "bob"):
            s = await rt.submit(remember, f"{who}'s private note", session=who)
            assert (await rt.result(s.id)).status is TaskStatus.SUCCEEDED
        held = await rt.submit(waits, {}, session="carol")
        for _ in range(2000):
            info = await rt.get(held.id)
            if info is not None and info.status is TaskStatus.WAITING:
                break
            await asyncio.sleep(0.01)

    dry = legion_cli("forget", "--session", "alice", "--dry-run", "--store", vec_url)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "1\tmemory keys of 1 sessions would go (dry run)",
        "1\tsession-scoped vectors would go (dry run)",  # (not counted: it said nothing)
    ]
    done = legion_cli("forget", "--session", "alice", "--store", vec_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "1\tmemory keys deleted",
        "1\tsession-scoped vectors deleted",
    ]
    busy = legion_cli("forget", "--session", "carol", "--store", vec_url)
    assert busy.returncode == 1 and "cancel its tasks first" in busy.stderr
    # A misspelt session, or tenant, read as done ("0 memory keys deleted", exit 0).
    typo = legion_cli("forget", "--session", "Bob", "--store", vec_url)
    assert typo.returncode == 0 and typo.stdout.startswith("0\tmemory keys deleted")
    assert "no memory nor session-scoped vectors kept for session 'Bob'" in typo.stderr
    bad = legion_cli(
        "forget", "--session", "bob", "--tenant", "no such tenant!", "--store", vec_url
    )
    assert bad.returncode == 2 and "bad tenant name" in bad.stderr

    store = store_from_url(vec_url)
    await store.open()
    try:
        # A session that kept vectors alone: its dry run counts them, with no "check the
        # name" note (it said the session might be misspelt).
        await store.drop_memory(["bob"], float("inf"))
        only = legion_cli("forget", "--session", "bob", "--dry-run", "--store", vec_url)
        assert only.stdout.splitlines()[1] == "1\tsession-scoped vectors would go (dry run)"
        assert "note:" not in only.stderr, only.stderr
        assert await store.memory_items("alice") == {}
        assert set(await store.memory_items("carol")) == {"note"}  # (refused: kept)
        backend = vectors_for(store)
        notes = await backend.collection("notes")
        assert notes is not None
        assert await backend.count(notes, "alice") == 0
        assert await backend.count(notes, "bob") == 1
        shared = await backend.collection("shared-notes")  # (no session's: kept)
        assert shared is not None and await backend.count(shared, "") == 2
    finally:
        await store.aclose()
