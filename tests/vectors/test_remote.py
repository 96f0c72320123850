"""ctx.vectors and ctx.llm.embed from the process executor: the worker does the work."""

from __future__ import annotations

from legion import Runtime, TaskStatus
from legion.executors import ProcessExecutor
from legion.llm import SimulatedProvider
from tests.vectors.agents import empty_text, remember_and_recall
from tests.vectors.conftest import sim_client


async def test_vectors_and_embeddings_work_from_a_child_process(
    db_url: str, sim: SimulatedProvider
) -> None:
    executors = {"process": ProcessExecutor(processes=1)}
    async with Runtime(db_url, executors=executors, executor="process", llm=sim_client(sim)) as rt:
        first = await rt.submit(
            remember_and_recall, {"text": "tea with milk", "query": "tea"}, session="s1"
        )
        r1 = await rt.result(first.id)
        second = await rt.submit(
            remember_and_recall, {"text": "green tea", "query": "tea"}, session="s1"
        )
        r2 = await rt.result(second.id)
        bad = await rt.result((await rt.submit(empty_text)).id)
        keys = [s.key for s in await rt.store.steps(second.id)]
    assert r1.status is TaskStatus.SUCCEEDED, r1.error
    assert r1.output["hits"] == ["tea with milk"] and r1.output["dims"] == 384
    assert sorted(r2.output["hits"]) == ["green tea", "tea with milk"]  # the session remembers
    assert any(k.startswith("vectors.add.notes.") for k in keys)
    assert any(k.startswith("llm.default.embed.") for k in keys)
    assert bad.status is TaskStatus.FAILED and bad.attempt == 1
    assert bad.error is not None and bad.error.type == "VectorError"
    assert "text 0 is empty" in bad.error.message
