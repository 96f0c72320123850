"""Agents for the vector tests that run in other processes (importable by module)."""

from __future__ import annotations

from typing import Any

import legion


@legion.agent(retries=0)
async def remember_and_recall(ctx: legion.Context, text: str, query: str) -> dict[str, Any]:
    notes = ctx.vectors("notes")
    ids = await notes.add([text], metadata={"kind": "note"})
    hits = await notes.search(query, k=3, where={"kind": "note"})
    dims = (await ctx.llm.embed([query])).dims
    return {"ids": ids, "hits": [h.text for h in hits], "dims": dims}


@legion.agent(retries=2)
async def empty_text(ctx: legion.Context) -> None:
    await ctx.vectors("notes").add([""])
