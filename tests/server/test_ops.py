"""Operational routes over real HTTP: metrics, statistics, workers, health, OpenAPI."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import legion
from legion import codec
from legion.errors import Permanent, ProviderUnavailable, StoreError
from legion.llm.breaker import Breaker, BreakerSettings, BreakerState
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.types import ChatResponse, Usage
from legion.retry import RetryPolicy
from legion.store.types import WorkerInfo
from legion.task import NewTask
from legion.testing import ScriptedProvider
from tests.server.conftest import Api, StartApi, admin_key


def scripted_llm(answers: int) -> LLMClient:
    reply = ChatResponse("ok", (), "stop", Usage(10, 5), "m-1", "scripted")
    provider = ScriptedProvider([reply] * answers)
    capacity = Capacity("main", rpm=600, tpm=100_000)
    return LLMClient([Route("main", provider, "m-1", capacity)])


class Samples:
    """The samples of an exposition, looked up by name and labels (in any order)."""

    def __init__(self, text: str) -> None:
        self._values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                name, _, labels = series.partition("{")
                pairs = re.findall(r'(\w+)="([^"]*)"', labels)
                self._values[(name, frozenset(pairs))] = float(value)

    def __call__(self, name: str, **labels: str) -> float:
        return self._values[(name, frozenset(labels.items()))]


async def test_metrics_in_prometheus_format(start_api: StartApi, tmp_path: Path) -> None:
    async with scripted_llm(3) as llm:
        api = await start_api(f"sqlite:///{tmp_path / 'm.db'}", llm=llm)
        tasks: list[dict[str, Any]] = [{"agent": "ask", "input": f"q{i}"} for i in range(3)]
        tasks += [{"agent": "doomed", "input": {"n": 1}}, {"agent": "work", "input": {"n": 1}}]
        _, sub = await api.call("POST", "/v1/tasks:batch", body={"tasks": tasks})
        for t in sub["tasks"]:
            await api.runtime.result(t["id"])
        await api.server.state.monitor.sample()
        async with api.http.get(api.url + "/metrics", headers=api.auth()) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            m = Samples(await resp.text())
    assert m("legion_tasks", status="succeeded") == 4
    assert m("legion_tasks", status="dead") == 1
    assert m("legion_queue_depth") == 0 and m("legion_tasks_in_flight") == 0
    assert m("legion_tasks_finished_total", agent="ask", status="succeeded") == 3
    assert m("legion_tasks_finished_total", agent="doomed", status="dead") == 1
    assert m("legion_task_duration_seconds_count", agent="work", status="succeeded") == 1
    assert m("legion_tokens_total", type="input") == 30
    assert m("legion_tokens_total", type="output") == 15
    route = {"route": "main", "provider": "scripted", "model": "m-1"}
    assert m("legion_llm_requests_total", **route) == 3
    assert m("legion_llm_rate_limited_total", **route) == 0
    assert m("legion_llm_failed_total", **route) == 0 and m("legion_llm_waiting", **route) == 0
    assert m("legion_llm_tokens_total", **route, type="input") == 30
    assert m("legion_llm_limit_requests_per_minute", **route) == 600
    assert m("legion_llm_utilization", **route) > 0
    assert m("legion_workers", health="healthy") == 1
    assert m("legion_store_up") == 1


async def test_statistics_show_llm_capacity(start_api: StartApi, tmp_path: Path) -> None:
    async with scripted_llm(2) as llm:
        api = await start_api(f"sqlite:///{tmp_path / 's.db'}", llm=llm)
        for q in ("a", "b"):
            _, sub = await api.call("POST", "/v1/tasks", body={"agent": "ask", "input": q})
            assert (await api.finished(sub["id"]))["usage"]["llm_calls"] == 1
        await api.server.state.monitor.sample()
        status, stats = await api.call("GET", "/v1/statistics", headers=await admin_key(api))
    assert status == 200
    (route,) = stats["routes"]
    assert route["route"] == "main" and route["requests"] == 2 and route["rate_limited"] == 0
    assert route["rpm_limit"] == 600 and route["input_tokens"] == 20
    assert stats["totals"]["input_tokens"] == 20 and stats["totals"]["output_tokens"] == 10


@legion.agent(retries=0)
async def ask_then_fail(ctx: legion.Context, question: str) -> None:
    await ctx.llm.chat([{"role": "user", "content": question}])
    raise Permanent("no")


async def test_a_task_that_ends_again_counts_only_what_it_used_since(
    start_api: StartApi, tmp_path: Path
) -> None:
    """The feed gives a task's usage as it is now: a task retried after it failed, its
    recorded call replayed, ends again with the same usage, counted once."""
    async with scripted_llm(1) as llm:
        api = await start_api(f"sqlite:///{tmp_path / 's.db'}", llm=llm)
        ref = await api.runtime.submit(ask_then_fail, "a")
        assert not (await api.runtime.result(ref)).ok
        await api.server.state.monitor.sample()
        assert await api.runtime.retry(ref)
        again = await api.runtime.result(ref)
        assert not again.ok and again.usage is not None and again.usage["llm_calls"] == 1
        await api.server.state.monitor.sample()
        _, stats = await api.call("GET", "/v1/statistics", headers=await admin_key(api))
    assert stats["totals"]["failed"] == 2  # (two ends)
    assert stats["totals"]["input_tokens"] == 10 and stats["totals"]["output_tokens"] == 5


async def test_workers_lists_the_local_worker(api: Api) -> None:
    status, workers = await api.call("GET", "/v1/workers")
    assert status == 200
    (worker,) = workers
    assert worker["local"] is True and worker["healthy"] is True
    assert api.runtime.worker is not None and worker["id"] == api.runtime.worker.id


async def test_openapi_documents_the_public_routes(api: Api) -> None:
    status, doc = await api.call("GET", "/openapi.json")
    assert status == 200
    assert {"/v1/tasks", "/v1/tasks:batch", "/v1/tasks/{task_id}", "/v1/progress"} <= set(
        doc["paths"]
    )
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert "/" not in doc["paths"] and "/openapi.json" not in doc["paths"]


async def test_a_failing_store_answers_503_and_turns_health_red(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (await api.call("GET", "/healthz", headers={}))[0] == 200

    async def down(*args: object, **kwargs: object) -> None:
        raise StoreError("connection refused")

    monkeypatch.setattr(api.runtime.store, "list_tasks", down)
    monkeypatch.setattr(api.runtime.store, "counts", down)
    monkeypatch.setattr(api.runtime.store, "counts_by_tenant", down)
    status, body = await api.call("GET", "/v1/tasks")
    assert (status, body) == (503, {"detail": "the store is unavailable; try again later"})
    await api.server.state.monitor.sample()
    assert await api.call("GET", "/healthz", headers={}) == (503, {"status": "unavailable"})
    # alive all the same: a restart would not bring the store back
    assert await api.call("GET", "/livez", headers={}) == (200, {"status": "ok"})
    monkeypatch.undo()
    await api.server.state.monitor.sample()
    assert (await api.call("GET", "/healthz", headers={}))[0] == 200


async def test_a_sample_that_began_before_the_store_failed_does_not_hide_it(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monitor = api.server.state.monitor
    store = api.runtime.store
    counts = store.counts_by_tenant
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await release.wait()
        return await counts(*args, **kwargs)

    async def down(*args: object, **kwargs: object) -> None:
        raise StoreError("connection refused")

    monkeypatch.setattr(store, "counts_by_tenant", slow)
    # A sample that has read the feed and waits for the counts while the store fails:
    earlier = asyncio.create_task(monitor.sample())
    await entered.wait()
    monkeypatch.setattr(store, "event_details_after", down)
    later = asyncio.create_task(monitor.sample())  # begins after the store failed
    release.set()
    await asyncio.gather(earlier, later)
    # The later sample is the one published (it used to be overwritten by the earlier).
    assert await api.call("GET", "/healthz", headers={}) == (503, {"status": "unavailable"})


async def test_an_open_breaker_shows_in_metrics_and_statistics(
    start_api: StartApi, tmp_path: Path
) -> None:
    # The provider fails twice in a row: the route's breaker (2 failures) opens.
    down = ProviderUnavailable("scripted failed (503)", provider="scripted", status=503)
    breaker = Breaker(BreakerSettings(failures=2, open_for=30, max_open_for=30))
    llm = LLMClient(
        [Route("main", ScriptedProvider([down, down]), "m-1", Capacity("main"), breaker=breaker)],
        retry=RetryPolicy(retries=1, backoff=0),
    )
    async with llm:
        api = await start_api(f"sqlite:///{tmp_path / 'b.db'}", llm=llm)
        with pytest.raises(ProviderUnavailable):
            await llm.chat([{"role": "user", "content": "hi"}])
        await api.server.state.monitor.sample()
        async with api.http.get(api.url + "/metrics", headers=api.auth()) as resp:
            m = Samples(await resp.text())
        _, stats = await api.call("GET", "/v1/statistics", headers=await admin_key(api))
        assert api.runtime.worker is not None
        heartbeat = api.runtime.worker.health()  # what `legion status` shows of a worker
    assert heartbeat["breakers_open"] == ["main"]
    route = {"route": "main", "provider": "scripted", "model": "m-1"}
    assert m("legion_llm_breaker_open", **route) == 1
    assert m("legion_llm_breaker_state", **route) == 1
    assert stats["routes"][0]["breaker"] == "open"
    assert llm.statistics().routes["main"].breaker.state is BreakerState.OPEN  # type: ignore[union-attr]


async def test_a_task_no_worker_serves_asks_for_no_worker(
    start_api: StartApi, tmp_path: Path, gate: object
) -> None:
    # One task of an agent no worker (nor the server) serves, queued an hour: it counted
    # as "the oldest task waited", one more worker each sample, up to a pool's maximum.
    api = await start_api(f"sqlite:///{tmp_path / 'o.db'}")
    store = api.runtime.store
    an_hour_ago = time.time() - 3600
    await store.submit(
        [NewTask("nobody-serves-me", codec.dumps({}), None, max_attempts=1)], an_hour_ago
    )
    snapshot = await api.server.state.monitor.sample()
    assert snapshot.scaling is not None
    assert (snapshot.scaling.desired, snapshot.scaling.running) == (1, 1)
    # The server's own agent's tasks still count: 201 held ones for 200 slots (queued or
    # leased by now, either way they ask for a second worker).
    await store.submit(
        [NewTask("held", codec.dumps(i), None, max_attempts=1) for i in range(201)], an_hour_ago
    )
    snapshot = await api.server.state.monitor.sample()
    assert snapshot.scaling is not None and snapshot.scaling.desired == 2


async def test_workers_desired_follows_the_backlog(
    start_api: StartApi, tmp_path: Path, gate: object
) -> None:
    api = await start_api(f"sqlite:///{tmp_path / 'd.db'}")
    await api.server.state.monitor.sample()
    async with api.http.get(api.url + "/metrics", headers=api.auth()) as resp:
        assert Samples(await resp.text())("legion_workers_desired") == 1  # the one running
    tasks = [{"agent": "held", "input": i} for i in range(500)]
    status, _ = await api.call("POST", "/v1/tasks:batch", body={"tasks": tasks})
    assert status in (200, 201)
    await api.server.state.monitor.sample()
    async with api.http.get(api.url + "/metrics", headers=api.auth()) as resp:
        m = Samples(await resp.text())
    # 500 tasks, 200 slots a worker: 3 wanted, at most doubled in one step from 1.
    assert m("legion_workers_desired") == 2
    status, stats = await api.call("GET", "/v1/statistics", headers=await admin_key(api))
    assert status == 200
    assert stats["scaling"]["desired"] == 2 and stats["scaling"]["running"] == 1
    # The monitor's own periodic sample may have run since the one above: then the policy
    # already holds at 2 while the second worker starts, or, if the running worker has
    # leased its 200 tasks by then (300 left queued ask for 2), is steady at 2; either
    # way it names the 2.
    reason = stats["scaling"]["reason"]
    assert reason.startswith(
        ("scaling up to 2 (", "held at 2: waiting for 1 worker", "steady at 2 (")
    ), reason


async def test_a_store_that_hangs_turns_health_red_until_it_answers(
    start_api: StartApi, tmp_path: Path
) -> None:
    """A SQLite store locked by another process: the sample under way waits out the busy
    timeout (30 s), fails nothing meanwhile, and /healthz said "ok" for as long as the
    lock held (a load balancer kept sending)."""
    path = tmp_path / "locked.db"
    api = await start_api(f"sqlite:///{path}")
    monitor = api.server.state.monitor
    assert (await api.call("GET", "/healthz", headers={}))[0] == 200
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        # A write of the server's own (a submission) now waits for the lock on the store's
        # thread, and every read of the store with it, the monitor's samples too.
        submitting = asyncio.create_task(
            api.call("POST", "/v1/tasks", body={"agent": "work", "input": {"n": 1}})
        )
        statuses = []
        deadline = time.monotonic() + monitor.stuck_after + 20
        while time.monotonic() < deadline:  # polled as a load balancer polls it
            statuses.append((await api.call("GET", "/healthz", headers={}))[0])
            if statuses[-1] == 503:
                break
            await asyncio.sleep(0.1)
        assert statuses[-1] == 503, statuses
        assert await api.call("GET", "/livez", headers={}) == (200, {"status": "ok"})
        # The API says so at once, rather than holding every request (its key's check
        # too) behind the call that waits for the lock (39 s for a GET, seen).
        async with asyncio.timeout(5):  # (far less than the busy timeout, 30 s)
            for method, route in (("GET", "/v1/tasks"), ("POST", "/v1/tasks")):
                body = {"agent": "work", "input": {"n": 2}} if method == "POST" else None
                status, answer = await api.call(method, route, body=body)
                assert status == 503 and "does not answer" in answer["detail"], answer
    finally:
        locker.rollback()
        locker.close()
    assert (await submitting)[0] == 201
    await monitor.sample()
    assert (await api.call("GET", "/healthz", headers={}))[0] == 200


async def test_a_worker_silent_past_its_lease_is_unhealthy_and_holds_nothing(api: Api) -> None:
    """A worker paused past its own lease (its tasks taken back) was shown healthy, its
    tasks in flight, until a minute had passed."""
    store = api.runtime.store
    now = await store.now()
    beat = now - 35
    load = {"in_flight": 25, "lease_seconds": 30.0, "agents": ["work"]}
    await store.register_worker(WorkerInfo("paused", "h", 1, beat, beat, load))
    await api.server.state.monitor.sample()
    status, workers = await api.call("GET", "/v1/workers", headers=await admin_key(api))
    assert status == 200
    (paused,) = [w for w in workers if w["id"] == "paused"]
    assert paused["healthy"] is False and paused["in_flight"] == 0
