"""ctx.vectors on both stores (SQLite with sqlite-vec, PostgreSQL with pgvector), with the
simulator's deterministic embeddings over real HTTP."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import legion
from legion import Runtime, TaskStatus, codec
from legion.errors import VectorError
from legion.llm import Capacity, LLMClient, Route, SimulatedProvider
from legion.store import Store, store_from_url
from legion.task import NewTask
from legion.vectors import CollectionInfo, Item
from legion.vectors.backend import vectors_for
from legion.vectors.types import check_where
from tests.acceptance.conftest import legion as legion_cli
from tests.vectors.conftest import sim_client

DOCS = [
    "the cat sat on the warm mat",
    "dogs chase the ball in the park",
    "the stock market fell sharply today",
    "a kitten and a cat sleep on the mat",
]


@legion.agent(retries=0)
async def note(ctx: legion.Context, text: str) -> list[str]:
    """What the session's notes held, then this one added."""
    col = ctx.vectors("notes")
    seen = [h.text for h in await col.search(text, k=5)]
    await col.add([text])
    return seen


async def run(
    url: str, sim: SimulatedProvider, agent: Any, *args: Any, session: str | None = None
) -> Any:
    async with Runtime(url, llm=sim_client(sim)) as rt:
        return await rt.result((await rt.submit(agent, *args, session=session)).id)


async def test_add_search_delete(vec_url: str, sim: SimulatedProvider) -> None:
    @legion.agent
    async def agent(ctx: legion.Context) -> dict[str, Any]:
        col = ctx.vectors("kb", scope="shared")
        ids = await col.add(DOCS, metadata=[{"n": i} for i in range(len(DOCS))])
        first = await col.search("cat on a mat", k=2)
        gone = await col.delete([ids[0], "no-such-id"])
        after = await col.search("cat on a mat", k=4)
        return {
            "ids": ids,
            "first": [(h.text, h.metadata, h.score) for h in first],
            "gone": gone,
            "after": [h.id for h in after],
        }

    r = await run(vec_url, sim, agent)
    assert r.status is TaskStatus.SUCCEEDED, r.error
    out = r.output
    assert len(out["ids"]) == 4 and len(set(out["ids"])) == 4
    texts = [t for t, _, _ in out["first"]]
    assert set(texts) == {DOCS[0], DOCS[3]}  # the two cat/mat texts, not dogs or stocks
    assert out["first"][0][2] >= out["first"][1][2] > 0
    assert out["first"][0][1] in ({"n": 0}, {"n": 3})
    assert out["gone"] == 1
    assert out["ids"][0] not in out["after"] and len(out["after"]) == 3
    # two embedding calls for the adds/searches... one per add and one per search
    assert r.usage is not None and r.usage["llm_calls"] == 3
    assert r.usage["prompt_tokens"] > 0


async def test_metadata_filters(vec_url: str, sim: SimulatedProvider) -> None:
    @legion.agent
    async def agent(ctx: legion.Context) -> list[list[str]]:
        col = ctx.vectors("kb", scope="shared")
        await col.add(
            DOCS,
            metadata=[
                {"lang": "en", "animal": True, "year": 2024, "source-url": "a.b/x"},
                {"lang": "en", "animal": True, "year": 2023, "source-url": "a.b/y"},
                {"lang": "de", "animal": False, "year": 2024, "source-url": "a.b/x"},
                {"lang": "de", "animal": True, "year": 2024, "source-url": "a.b/y"},
            ],
        )
        queries: list[dict[str, Any]] = [
            # (a key that add takes is one where= takes: "source-url" was refused)
            {"lang": "de", "source-url": "a.b/x"},
            {"animal": True, "year": 2024},
            {"animal": False},
            {"lang": "fr"},
            # A value equals one of its own JSON type only, on both stores: 1 is not true,
            # "2024" is not 2024 (2024.0 is: a number is a number).
            {"animal": 1},
            {"year": "2024"},
            {"year": 2023.0},
        ]
        return [[h.text for h in await col.search("cat", k=10, where=w)] for w in queries]

    r = await run(vec_url, sim, agent)
    assert r.status is TaskStatus.SUCCEEDED, r.error
    de, animal_2024, not_animal, fr, one, text_year, float_year = r.output
    assert (one, text_year, float_year) == ([], [], [DOCS[1]])
    assert de == [DOCS[2]]
    assert sorted(animal_2024) == sorted([DOCS[0], DOCS[3]])
    assert not_animal == [DOCS[2]]
    assert fr == []


async def test_sessions_are_isolated_and_shared_is_shared(
    vec_url: str, sim: SimulatedProvider
) -> None:
    @legion.agent
    async def remember(ctx: legion.Context, text: str) -> None:
        await ctx.vectors("turns").add([text])
        await ctx.vectors("common", scope="shared").add([text], ids=[ctx.session])

    @legion.agent
    async def recall(ctx: legion.Context, query: str) -> dict[str, list[str]]:
        own = await ctx.vectors("turns").search(query, k=5)
        common = await ctx.vectors("common", scope="shared").search(query, k=5)
        return {"own": [h.text for h in own], "common": sorted(h.text for h in common)}

    async with Runtime(vec_url, llm=sim_client(sim)) as rt:
        for session, text in (
            ("alice", "alice likes green tea"),
            ("bob", "bob likes black coffee"),
        ):
            t = await rt.submit(remember, text, session=session)
            assert (await rt.result(t.id)).status is TaskStatus.SUCCEEDED
        results = {}
        for session in ("alice", "bob", "carol"):
            t = await rt.submit(recall, "what does someone like", session=session)
            results[session] = (await rt.result(t.id)).output
    assert results["alice"]["own"] == ["alice likes green tea"]
    assert results["bob"]["own"] == ["bob likes black coffee"]
    assert results["carol"]["own"] == []  # a session with nothing remembered: no hits
    both = sorted(["alice likes green tea", "bob likes black coffee"])
    assert all(results[s]["common"] == both for s in results)


async def test_a_purged_task_takes_its_own_sessions_vectors_and_leaves_the_rest(
    vec_url: str, sim: SimulatedProvider
) -> None:
    # A purge took the memory of a task that ran without a session (its own, task-<id>)
    # and left its session-scoped vectors, which no other task reads: they grew for ever.
    from legion.cli.purge import drop_vectors

    @legion.agent
    async def note(ctx: legion.Context, text: str) -> None:
        await ctx.vectors("turns").add([text])
        await ctx.vectors("common", scope="shared").add([text], ids=[text])

    async with Runtime(vec_url, llm=sim_client(sim)) as rt:
        alone = await rt.submit(note, "a note of a task alone")
        named = await rt.submit(note, "a note of a named session", session="kept")
        for t in (alone, named):
            assert (await rt.result(t.id)).status is TaskStatus.SUCCEEDED
        now = await rt.store.now()
        purged = await rt.store.purge(now + 1, [TaskStatus.SUCCEEDED])
        assert purged.tasks == 2 and purged.sessions == (f"task-{alone.id}",)
        assert await drop_vectors(rt.store, purged.sessions) == 1
        backend = vectors_for(rt.store)
        turns = await backend.collection("turns")
        common = await backend.collection("common")
        assert turns is not None and common is not None
        assert await backend.count(turns, f"task-{alone.id}") == 0
        assert await backend.count(turns, "kept") == 1  # a named session's stays
        assert await backend.count(common, "") == 2  # and a shared collection whole


async def test_two_tenants_naming_one_session_share_no_memory_and_no_vectors(
    vec_url: str, sim: SimulatedProvider
) -> None:
    @legion.agent
    async def keep(ctx: legion.Context, secret: str) -> dict[str, Any]:
        before = await ctx.memory.get("secret")
        await ctx.memory.set("secret", secret)
        turns = ctx.vectors("turns")
        seen = [h.text for h in await turns.search("a plan", k=5)]
        await turns.add([secret])
        return {"before": before, "seen": seen, "session": ctx.session}

    def task(secret: str, tenant: str, session: str | None) -> NewTask:
        return NewTask("keep", codec.dumps({"secret": secret}), session=session, tenant=tenant)

    async with Runtime(vec_url, llm=sim_client(sim), agents=[keep]) as rt:
        (a,) = await rt.submit_tasks([task("acme merger plan", "acme", "shared-name")])
        first = await rt.result(a.id)
        (b,) = await rt.submit_tasks([task("globex plan", "globex", "shared-name")])
        second = await rt.result(b.id)
        # The default session is task-<id>: another tenant naming it sees nothing either.
        (c,) = await rt.submit_tasks([task("acme private plan", "acme", None)])
        await rt.result(c.id)
        (d,) = await rt.submit_tasks([task("guess", "globex", f"task-{c.id}")])
        guessed = await rt.result(d.id)
        (e,) = await rt.submit_tasks([task("acme again", "acme", "shared-name")])
        again = await rt.result(e.id)
    assert first.output == {"before": None, "seen": [], "session": "shared-name"}
    assert second.output == {"before": None, "seen": [], "session": "shared-name"}
    assert guessed.output == {"before": None, "seen": [], "session": f"task-{c.id}"}
    assert again.output == {
        "before": "acme merger plan",  # its own tenant's session, as before
        "seen": ["acme merger plan"],
        "session": "shared-name",
    }


async def test_a_retried_task_adds_nothing_twice_and_pays_once(
    vec_url: str, sim: SimulatedProvider
) -> None:
    @legion.agent(retries=2, backoff=0)
    async def agent(ctx: legion.Context) -> list[str]:
        col = ctx.vectors("kb", scope="shared")
        await col.add(DOCS[:2])
        await col.add(DOCS[2:], ids=["x", "y"])
        hits = await col.search("cat mat", k=10)
        if ctx.attempt == 1:
            raise ConnectionError("lost after writing")
        return [h.text for h in hits]

    async with Runtime(vec_url, llm=sim_client(sim)) as rt:
        r = await rt.result((await rt.submit(agent)).id)
        backend = vectors_for(rt.store)
        info = await backend.collection("kb")
        assert info is not None
        count = await backend.count(info, "")
    assert r.status is TaskStatus.SUCCEEDED and r.attempt == 2
    assert count == 4
    assert sorted(r.output) == sorted(DOCS)
    assert sim.simulator.stats().requests_total == 3  # 2 adds + 1 search, embedded once


async def test_the_same_ids_written_again_replace_not_duplicate(vec_store: Store) -> None:
    backend = vectors_for(vec_store)
    info = CollectionInfo("raw", "shared", "m", 3)
    items = [Item(f"i{n}", f"text {n}", {"n": n}, (1.0, float(n), 0.5)) for n in range(5)]
    await backend.write(info, "", items)
    await backend.write(info, "", items)  # what a rerun after a crash before the record does
    await backend.write(info, "", [Item("i0", "changed", {}, (0.0, 1.0, 0.0))])
    assert await backend.count(info, "") == 5
    hits = await backend.search(info, "", (0.0, 1.0, 0.0), 1, {})
    assert [(h.id, h.text) for h in hits] == [("i0", "changed")]
    assert math.isclose(hits[0].score, 1.0, abs_tol=1e-5)


async def test_a_dropped_collection_goes_with_its_items_and_can_be_made_anew(
    vec_store: Store,
) -> None:
    # No command removed a collection: a corpus loaded by mistake stayed for good.
    backend = vectors_for(vec_store)
    gone = CollectionInfo("gone", "session", "m", 3)
    kept = CollectionInfo("kept", "shared", "m", 3)
    items = [Item(f"i{n}", f"text {n}", {}, (1.0, float(n), 0.5)) for n in range(3)]
    await backend.write(gone, "s1", items)
    await backend.write(gone, "s2", items[:1])
    await backend.write(kept, "", items)
    assert await backend.drop_collection("gone") == 4
    assert await backend.collection("gone") is None
    assert await backend.drop_collection("gone") is None
    assert [c.name for c in await backend.collections()] == ["kept"]
    assert await backend.count(kept, "") == 3
    other = CollectionInfo("gone", "shared", "m", 3)  # the name is free: another scope
    await backend.write(other, "", items[:2])
    assert await backend.count(other, "") == 2


async def test_a_collection_dropped_and_loaded_again_by_another_process_is_found(
    vec_url: str, vec_store: Store
) -> None:
    # A corpus refreshed by `legion vectors drop` and `load`: every worker on PostgreSQL
    # that had searched it before kept the dropped table's name, and each search of the
    # new one failed ("relation ... does not exist") until the worker restarted.
    worker = vectors_for(vec_store)
    info = CollectionInfo("corpus", "shared", "m", 3)
    await worker.write(info, "", [Item("old", "old text", {}, (1.0, 0.0, 0.0))])
    assert [h.id for h in await worker.search(info, "", (1.0, 0.0, 0.0), 1, {})] == ["old"]
    operator = store_from_url(vec_url)  # (another process's store: its own backend)
    await operator.open()
    try:
        refresh = vectors_for(operator)
        assert await refresh.drop_collection("corpus") == 1
        await refresh.write(info, "", [Item("new", "new text", {}, (1.0, 0.0, 0.0))])
    finally:
        await operator.aclose()
    assert [h.id for h in await worker.search(info, "", (1.0, 0.0, 0.0), 1, {})] == ["new"]
    assert await worker.count(info, "") == 1
    assert await worker.delete(info, "", ["new"]) == 1


async def test_metadata_is_replaced_in_place_keeping_text_and_vector(vec_store: Store) -> None:
    backend = vectors_for(vec_store)
    info = CollectionInfo("tags", "shared", "m", 3)
    await backend.write(info, "", [Item("a", "alpha", {"kind": "old"}, (1.0, 0.0, 0.0))])
    assert await backend.stored(info, "", ["a", "b"]) == {"a": ("alpha", {"kind": "old"})}
    await backend.set_metadata(info, "", {"a": {"kind": "new", "n": 2}})
    assert await backend.stored(info, "", ["a"]) == {"a": ("alpha", {"kind": "new", "n": 2})}
    hits = await backend.search(info, "", (1.0, 0.0, 0.0), 1, {"kind": "new"})
    assert [(h.id, h.text) for h in hits] == [("a", "alpha")]
    assert math.isclose(hits[0].score, 1.0, abs_tol=1e-5)


async def test_bad_input_is_a_clear_error_and_writes_nothing(
    vec_url: str, sim: SimulatedProvider
) -> None:
    async with Runtime(vec_url, llm=sim_client(sim)) as rt:
        backend = vectors_for(rt.store)
        small = CollectionInfo("small", "shared", "sim-model", 8)
        await backend.write(small, "", [Item("a", "eight dims", {}, tuple([0.5] * 8))])

        async def fails(agent: Any) -> str:
            r = await rt.result((await rt.submit(agent)).id)
            assert r.status is TaskStatus.FAILED, r
            assert r.error is not None and r.error.type == "VectorError", r.error
            assert r.attempt == 1  # a bad input is not retried
            return r.error.message

        @legion.agent(retries=3, backoff=0)
        async def wrong_dimension(ctx: legion.Context) -> None:
            await ctx.vectors("small", scope="shared").add(["three eighty four dims"])

        @legion.agent(retries=3, backoff=0)
        async def empty_text(ctx: legion.Context) -> None:
            await ctx.vectors("fresh", scope="shared").add(["fine", "  "])

        @legion.agent(retries=3, backoff=0)
        async def missing(ctx: legion.Context) -> None:
            await ctx.vectors("nowhere", scope="shared").search("anything")

        @legion.agent(retries=3, backoff=0)
        async def wrong_scope(ctx: legion.Context) -> None:
            await ctx.vectors("small").search("anything")

        @legion.agent(retries=3, backoff=0)
        async def other_model(ctx: legion.Context) -> None:
            await ctx.vectors("small", scope="shared", model="other").add(["x"])

        @legion.agent(retries=3, backoff=0)
        async def nul_text(ctx: legion.Context) -> None:
            await ctx.vectors("fresh", scope="shared").add(["a\x00b"])

        @legion.agent(retries=3, backoff=0)
        async def nul_metadata(ctx: legion.Context) -> None:
            await ctx.vectors("fresh", scope="shared").add(["ok"], metadata={"k": ["v\x00"]})

        @legion.agent(retries=3, backoff=0)
        async def nul_id(ctx: legion.Context) -> None:
            await ctx.vectors("fresh", scope="shared").add(["ok"], ids=["i\x00d"])

        # A NUL was kept by SQLite and failed PostgreSQL's write as a store error, retried
        # (and embedded again) every attempt.
        for agent, what in ((nul_text, "text 0"), (nul_metadata, "metadata"), (nul_id, "an id")):
            assert f"{what} holds a NUL character" in await fails(agent)
        assert "wrong dimension" in await fails(wrong_dimension)
        assert "text 1 is empty" in await fails(empty_text)
        assert "no shared vector collection 'nowhere'" in await fails(missing)
        assert "shared-scoped" in await fails(wrong_scope)
        assert "model 'sim-model'" in await fails(other_model)
        assert await backend.count(small, "") == 1
        assert await backend.collection("fresh") is None
        assert [c.name for c in await backend.collections()] == ["small"]
    # The one add that got to embedding (wrong_dimension: the other model's add is refused
    # before its embedding, a route here serving the collection's model).
    assert sim.simulator.stats().requests_total == 1


async def _has_hnsw_index(url: str) -> bool:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url.replace("&pool_max_size=4", "")) as c:
        cur = await c.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema()"
            " AND indexdef LIKE '%USING hnsw%'"
        )
        row = await cur.fetchone()
    return row is not None and row[0] == 1


async def test_recall_at_10_against_exact_search_on_10000_vectors(
    vec_url: str, vec_store: Store
) -> None:
    import numpy as np

    rng = random.Random(7)
    dims, n, queries, k = 32, 10_000, 40, 10
    data = np.array([[rng.gauss(0, 1) for _ in range(dims)] for _ in range(n)], dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    backend = vectors_for(vec_store)
    info = CollectionInfo("random", "shared", "none", dims)
    items = [Item(str(i), f"v{i}", {}, tuple(float(x) for x in data[i])) for i in range(n)]
    await backend.write(info, "", items)
    assert await backend.count(info, "") == n
    if vec_url.startswith("postgresql"):  # the searches below walk the HNSW index
        assert await _has_hnsw_index(vec_url)
    recalls = []
    for _ in range(queries):
        q = np.array([rng.gauss(0, 1) for _ in range(dims)], dtype=np.float32)
        q /= np.linalg.norm(q)
        exact = {str(i) for i in np.argsort(-(data @ q))[:k]}
        hits = await backend.search(info, "", tuple(float(x) for x in q), k, {})
        assert len(hits) == k
        recalls.append(len(exact & {h.id for h in hits}) / k)
    assert sum(recalls) / len(recalls) >= 0.95, recalls


async def test_a_collection_name_and_scope_are_checked_before_anything(
    db_url: str, sim: SimulatedProvider
) -> None:
    @legion.agent
    async def agent(ctx: legion.Context) -> list[str]:
        errors = []
        bad: Callable[[], object]
        for bad in (lambda: ctx.vectors("no spaces"), lambda: ctx.vectors("ok", scope="team")):
            try:
                bad()
            except VectorError as exc:
                errors.append(str(exc))
        return errors

    r = await run(db_url, sim, agent)
    assert r.status is TaskStatus.SUCCEEDED
    assert "bad collection name" in r.output[0] and "bad scope 'team'" in r.output[1]


class _ZeroFor:
    """The simulator, except that it embeds texts holding ``mark`` as all zeros: what a
    model may answer for a text it makes nothing of (a provider we cannot reach)."""

    def __init__(self, inner: SimulatedProvider, mark: str) -> None:
        self._inner = inner
        self._mark = mark
        self.name = inner.name

    async def chat(self, request: Any, *, timeout: float) -> Any:  # noqa: ASYNC109
        return await self._inner.chat(request, timeout=timeout)

    async def embed(self, request: Any, *, timeout: float) -> Any:  # noqa: ASYNC109
        result = await self._inner.embed(request, timeout=timeout)
        vectors = tuple(
            tuple(0.0 for _ in v) if self._mark in text else v
            for text, v in zip(request.texts, result.embeddings.vectors, strict=True)
        )
        return dataclasses.replace(
            result, embeddings=dataclasses.replace(result.embeddings, vectors=vectors)
        )

    async def aclose(self) -> None:
        pass


async def test_a_vector_with_no_direction_is_refused_and_a_stored_one_is_no_ones_neighbour(
    vec_url: str, sim: SimulatedProvider
) -> None:
    zeroing = _ZeroFor(sim, "NOTHING")
    client = LLMClient([Route("default", zeroing, "sim-model", Capacity("default"))])
    async with Runtime(vec_url, llm=client) as rt:
        backend = vectors_for(rt.store)
        # Stored before legion refused them: a zero vector among others.
        info = CollectionInfo("old", "shared", "sim-model", 3)
        await backend.write(
            info,
            "",
            [
                Item("zero", "no direction", {}, (0.0, 0.0, 0.0)),
                Item("x", "along x", {}, (1.0, 0.0, 0.0)),
                Item("y", "along y", {}, (0.0, 1.0, 0.0)),
            ],
        )
        hits = await backend.search(info, "", (1.0, 0.1, 0.0), 3, {})
        assert [h.id for h in hits] == ["x", "y"]  # no crash, and the zero one is nobody's

        @legion.agent(retries=3, backoff=0)
        async def adds(ctx: legion.Context, texts: list[str]) -> list[str]:
            return await ctx.vectors("kb", scope="shared").add(texts)

        @legion.agent(retries=3, backoff=0)
        async def searches(ctx: legion.Context, query: str) -> list[str]:
            return [h.id for h in await ctx.vectors("kb", scope="shared").search(query)]

        # Symbols alone: the simulator gives them a direction of their own.
        ok = await rt.result((await rt.submit(adds, ["* * *", "a cat"])).id)
        assert ok.status is TaskStatus.SUCCEEDED, ok.error
        refused = await rt.result((await rt.submit(adds, ["fine", "NOTHING here"])).id)
        assert refused.status is TaskStatus.FAILED and refused.attempt == 1
        assert refused.error is not None and refused.error.type == "VectorError"
        assert "text 1 ('NOTHING here') is all zeros" in refused.error.message
        query = await rt.result((await rt.submit(searches, "NOTHING")).id)
        assert query.status is TaskStatus.FAILED and query.error is not None
        assert "the query 'NOTHING' is all zeros" in query.error.message
        found = await rt.result((await rt.submit(searches, "* * *")).id)
        assert found.status is TaskStatus.SUCCEEDED, found.error
        assert len(found.output) == 2
        kb = await backend.collection("kb")
        assert kb is not None and await backend.count(kb, "") == 2  # "fine" was not written


async def test_a_search_by_another_model_than_the_collections_is_refused(
    vec_url: str, sim: SimulatedProvider
) -> None:
    @legion.agent(retries=0)
    async def load(ctx: legion.Context) -> list[str]:
        return await ctx.vectors("kb", scope="shared").add(DOCS)

    @legion.agent(retries=3, backoff=0)
    async def search_with(ctx: legion.Context, model: str | None) -> list[str]:
        hits = await ctx.vectors("kb", scope="shared", model=model).search("cat")
        return [h.text for h in hits]

    async with Runtime(vec_url, llm=sim_client(sim)) as rt:
        assert (await rt.result((await rt.submit(load)).id)).ok
        sent = sim.simulator.stats().requests_total
        other = await rt.result((await rt.submit(search_with, "other")).id)
        assert other.status is TaskStatus.FAILED and other.attempt == 1
        assert other.error is not None and other.error.type == "VectorError"
        assert "holds embeddings of model 'sim-model', not 'other-model'" in other.error.message
        # Refused before its embedding was bought (a route here serves the collection's
        # model, and the one named is another's).
        assert sim.simulator.stats().requests_total == sent
        same = await rt.result((await rt.submit(search_with, "default")).id)
        assert same.status is TaskStatus.SUCCEEDED and same.output[0] in (DOCS[0], DOCS[3])
    # A worker with no route of the collection's model.
    only_other = LLMClient([Route("default", sim, "other-model", Capacity("default"))])
    async with Runtime(vec_url, llm=only_other) as rt:
        r = await rt.result((await rt.submit(search_with, None)).id)
        assert r.status is TaskStatus.FAILED and r.error is not None, r
        assert r.error.type == "VectorError"
        assert "model 'sim-model', which no LLM route of this worker serves" in r.error.message


def test_where_refuses_a_value_json_cannot_hold() -> None:
    for value in (math.nan, math.inf, -math.inf, 2**63, -(2**63) - 1):
        try:
            check_where({"n": value})
        except VectorError as exc:
            assert "where={'n'" in str(exc), exc
        else:
            raise AssertionError(f"{value!r} was taken")
    assert check_where({"n": 2**63 - 1, "f": 1.5, "b": True}) == {
        "n": 2**63 - 1,
        "f": 1.5,
        "b": True,
    }


async def test_a_store_named_through_a_symbolic_link_keeps_one_file_of_vectors(
    tmp_path: Path, sim: SimulatedProvider
) -> None:
    # The vectors' file was named from the path as given: a store opened through a link
    # and by its own path had one memory and two files of vectors (a session's vectors
    # missing on the other side).
    from legion.vectors.sqlite import vectors_path

    (tmp_path / "data").mkdir()
    (tmp_path / "app.db").symlink_to(tmp_path / "data" / "store.db")

    seen = []
    for path in ("data/store.db", "app.db"):
        url = f"sqlite:///{tmp_path / path}"
        async with Runtime(url, llm=sim_client(sim)) as rt:
            r = await rt.result((await rt.submit(note, "zebras eat grass", session="S")).id)
        seen.append(r.output)
    assert seen == [[], ["zebras eat grass"]]
    assert vectors_path(str(tmp_path / "app.db")) == str(tmp_path / "data" / "store.vectors.db")
    assert not (tmp_path / "app.vectors.db").exists()


async def test_vectors_left_behind_by_a_deleted_store_are_refused_not_served(
    tmp_path: Path, sim: SimulatedProvider
) -> None:
    # A store deleted (its file, -wal and -shm) and made again at the same path adopted
    # the vectors file beside it: the new store's task 1 was served the session vectors
    # of the old store's task 1.
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first = await run(url, sim, note, "the old store's private note")
    again = await run(url, sim, note, "another note")  # (the same store: its own file)
    assert (first.output, again.status) == ([], TaskStatus.SUCCEEDED)
    for name in ("runs.db", "runs.db-wal", "runs.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    assert (tmp_path / "runs.vectors.db").exists()

    fresh = await run(url, sim, note, "hello")
    assert fresh.status == TaskStatus.FAILED and "private note" not in str(fresh.output)
    assert fresh.error.type == "VectorError"
    assert "holds the vectors of another store" in fresh.error.message
    assert "delete it" in fresh.error.message and "legion vectors adopt" in fresh.error.message
    # Were they this store's (a store restored from an old backup has another number),
    # `legion vectors adopt` ties them to it.
    adopted = legion_cli("vectors", "adopt", "--store", url)
    assert adopted.returncode == 0, adopted.stderr
    # (the new store's task 2 has the old task 2's session, and now its vectors)
    assert (await run(url, sim, note, "hello")).output == ["another note"]
    for name in ("runs.vectors.db", "runs.vectors.db-wal", "runs.vectors.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    assert (await run(url, sim, note, "hello")).output == []  # (afresh, as it says)


async def test_a_vectors_file_an_older_legion_made_is_its_stores(
    tmp_path: Path, sim: SimulatedProvider
) -> None:
    # A file from before the files were tied to their store: kept, and tied to it now.
    from legion.vectors.sqlite import connect  # (the SQLite library the vectors use)

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    await run(url, sim, note, "kept from before", session="S")
    db = connect(str(tmp_path / "runs.vectors.db"))
    db.execute("DROP TABLE vector_owner")
    db.close()
    assert (await run(url, sim, note, "now", session="S")).output == ["kept from before"]
    assert (await run(url, sim, note, "then", session="S")).status == TaskStatus.SUCCEEDED
