"""Server-sent events over real HTTP: a task's changes and steps; the run's progress."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fastapi.encoders import jsonable_encoder

from legion.errors import StoreUnavailable
from legion.server.keys import new_key
from legion.server.streams import event_json
from tests.server.conftest import Api, events, events_with_ids, next_event


async def test_a_task_stream_sends_changes_steps_and_the_end(api: Api, gate: asyncio.Event) -> None:
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "held", "input": {"n": 4}})
    resp = await api.stream(f"/v1/tasks/{sub['id']}/events")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    seen: list[tuple[str, Any]] = []
    async for name, data in events(resp):
        seen.append((name, data))
        if name == "step":
            gate.set()  # the task is running and has recorded its first step
        if name == "end":
            break
    names = [n for n, _ in seen]
    assert names[0] == "task" and names[-1] == "end"
    assert [d["key"] for n, d in seen if n == "step"] == ["started"]
    statuses = [d["status"] for n, d in seen if n == "task"]
    assert statuses[0] in ("queued", "running") and statuses[-1] == "succeeded"
    end = seen[-1][1]
    assert end["output"] == 4 and [s["key"] for s in end["steps"]] == ["started"]
    assert await resp.content.read() == b""  # the server closed the stream


async def test_a_finished_tasks_stream_ends_at_once(api: Api) -> None:
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "work", "input": {"n": 1}})
    await api.finished(sub["id"])
    resp = await api.stream(f"/v1/tasks/{sub['id']}/events")
    names = [name async for name, _ in events(resp)]
    assert names == ["task", "step", "step", "step", "end"]


async def test_a_stream_resumed_with_last_event_id_sends_only_the_steps_after_it(
    api: Api,
) -> None:
    # A client that reconnected (a browser's EventSource does by itself) was sent every
    # step again: the events had no id, and Last-Event-ID was not read.
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "work", "input": {"n": 1}})
    await api.finished(sub["id"])
    path = f"/v1/tasks/{sub['id']}/events"
    first = [e async for e in events_with_ids(await api.stream(path))]
    steps = [(data["key"], event_id) for name, data, event_id in first if name == "step"]
    assert len(steps) == 3 and all(event_id for _, event_id in steps)
    seen, after = steps[0][1], [k for k, _ in steps[1:]]
    headers = {**api.auth(), "Last-Event-ID": str(seen)}
    async with api.http.get(api.url + path, headers=headers) as resp:
        again = [(name, data) async for name, data in events(resp)]
    assert [n for n, _ in again] == ["task", "step", "step", "end"]
    assert [d["key"] for n, d in again if n == "step"] == after
    # An id the stream does not know (steps purged, another stream's): every step.
    headers = {**api.auth(), "Last-Event-ID": "no-such-step"}
    async with api.http.get(api.url + path, headers=headers) as resp:
        names = [name async for name, _ in events(resp)]
    assert names == ["task", "step", "step", "step", "end"]


async def test_streams_say_closing_when_the_server_stops(api: Api, gate: asyncio.Event) -> None:
    # A stream that ended as the server stopped looked like one that ended well.
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "held", "input": {"n": 1}})
    streams = [await api.stream(p) for p in ("/v1/progress", f"/v1/tasks/{sub['id']}/events")]
    for resp in streams:
        await anext(events(resp))  # (it has begun)
    api.server.state.closing.set()  # what the server's stop does first
    api.server.state.monitor.close()
    for resp in streams:
        seen = [name async for name, _ in events(resp)]  # to the stream's end
        assert seen[-1] == "closing"


async def test_a_stream_of_an_unknown_task_is_404(api: Api) -> None:
    assert (await api.call("GET", "/v1/tasks/777/events"))[0] == 404


async def test_the_progress_stream_follows_the_run(api: Api) -> None:
    resp = await api.stream("/v1/progress")
    stream = events(resp)
    name, history = await anext(stream)
    assert name == "history" and isinstance(history, list)
    name, first = await anext(stream)
    assert name == "progress" and first["totals"]["finished"] == 0
    tasks = [{"agent": "work", "input": {"n": i}} for i in range(20)]
    tasks += [{"agent": "doomed", "input": {"n": 0}}]
    _, sub = await api.call("POST", "/v1/tasks:batch", body={"tasks": tasks})

    def done(name: str, data: Any) -> bool:
        return name == "progress" and data["totals"]["finished"] == 21 and data["failures"]

    _, snapshot = await next_event(resp, done)
    assert snapshot["totals"]["succeeded"] == 20 and snapshot["totals"]["dead"] == 1
    assert snapshot["statuses"]["succeeded"] == 20 and snapshot["statuses"]["dead"] == 1
    assert snapshot["failures"][0]["id"] == sub["tasks"][-1]["id"]
    assert snapshot["failures"][0]["message"] == "doomed 0"
    (worker,) = snapshot["workers"]
    assert worker["local"] and worker["healthy"] and "work" in worker["agents"]
    assert snapshot["health"]["store_ok"] is True
    point = snapshot["point"]
    assert set(point) >= {"throughput", "p50", "p95", "p99", "in_flight", "queued"}
    # Encoded by legion, as FastAPI's encoder writes them (NaN as null).
    monitor = api.server.state.monitor
    for value in (monitor.snapshot, monitor.history(), [float("nan"), float("inf")]):
        assert json.loads(event_json(value)) == json.loads(
            json.dumps(jsonable_encoder(value)).replace("NaN", "null").replace("Infinity", "null")
        )


async def test_streams_end_once_their_key_is_revoked(api: Api, gate: asyncio.Event) -> None:
    # Authenticated once, at the request: a revoked key's streams ran on until the client
    # hung up (a waiting task's events for as long as it waited).
    token = new_key("short-lived", time.time())
    await api.runtime.store.add_api_key(token.record)
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "held", "input": {"n": 1}})
    streams = []
    for path in ("/v1/progress", f"/v1/tasks/{sub['id']}/events"):
        resp = await api.http.get(api.url + path, headers=api.auth(token.token))
        api.opened.append(resp)
        assert resp.status == 200
        streams.append(resp)
        await anext(events(resp))  # (it has begun)
    assert await api.runtime.store.revoke_api_key(token.record.id, time.time())
    for resp in streams:
        seen = [(name, data) async for name, data in events(resp)]  # to the stream's end
        assert seen[-1] == ("error", {"detail": "this API key was revoked"})
    assert (await api.call("GET", "/v1/key", headers=api.auth(token.token)))[0] == 403


async def test_streams_go_on_while_the_store_does_not_answer(
    api: Api, gate: asyncio.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PostgreSQL outage of 35 s: the key's check of a stream raised StoreUnavailable,
    # the stream ended with a 500 in the log, and a browser's EventSource, which does not
    # open a stream again after an error, left the dashboard standing still for good.
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "held", "input": {"n": 1}})
    progress = await api.stream("/v1/progress")
    task = await api.stream(f"/v1/tasks/{sub['id']}/events")
    await next_event(task, lambda name, _: name == "step")  # (it runs: it waits for the gate)
    store = api.runtime.store
    calls = {"api_key": 0, "step_count": 0, "get": 0}
    failed_enough = asyncio.Event()

    def down(name: str) -> Callable[..., Awaitable[None]]:
        async def fail(*args: object, **kwargs: object) -> None:
            calls[name] += 1
            if min(calls.values()) >= 3:
                failed_enough.set()
            raise StoreUnavailable("the store at ... is unavailable: connection refused")

        return fail

    for name in calls:
        monkeypatch.setattr(store, name, down(name))
    async with asyncio.timeout(30):  # (a bound on a broken test: a dead stream hung it)
        await failed_enough.wait()  # (each stream has met the outage three times)
        monkeypatch.undo()
        _, snapshot = await next_event(progress, lambda name, _: name == "progress")
        assert "totals" in snapshot  # the same stream goes on
        gate.set()
        seen = [name async for name, _ in events(task)]  # to the stream's end
    assert seen[-1] == "end"


def test_a_resumed_stream_sends_the_steps_of_an_attempt_on_a_clock_behind() -> None:
    """Steps were ordered by the time they finished, each by its worker's clock: a task
    taken over by a worker 20 s behind recorded steps that sorted before the last one a
    client had received, and its resumed stream never sent them."""
    from legion.server.streams import _through, in_order
    from legion.store.types import StepInfo

    ahead = [StepInfo(f"s{i}", 1, i, 1_000.0 + i, 1_000.5 + i) for i in range(4)]
    behind = [StepInfo(f"s{i}", 2, i, 990.0 + i, 990.5 + i) for i in range(4, 8)]
    steps = in_order(behind + ahead)
    assert [s.key for s in steps] == [f"s{i}" for i in range(8)]
    assert _through(steps, "s3") == ["s0", "s1", "s2", "s3"]


async def test_a_follower_reads_a_tasks_steps_again_only_when_there_are_new_ones(
    api: Api, gate: asyncio.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each poll (twice a second) read every step of the task: 200 followers of an idle
    5,000-step task slowed every other request of the server twentyfold."""
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "held", "input": {"n": 1}})
    task = await api.stream(f"/v1/tasks/{sub['id']}/events")
    await next_event(task, lambda name, _: name == "step")  # (it waits for the gate now)
    store = api.runtime.store
    reads = {"steps": 0, "step_count": 0}
    counted = asyncio.Event()
    steps, step_count = store.steps, store.step_count

    async def read_steps(task_id: int) -> Any:
        reads["steps"] += 1
        return await steps(task_id)

    async def count_steps(task_id: int) -> int:
        reads["step_count"] += 1
        if reads["step_count"] >= 3:
            counted.set()
        return await step_count(task_id)

    monkeypatch.setattr(store, "steps", read_steps)
    monkeypatch.setattr(store, "step_count", count_steps)
    async with asyncio.timeout(30):  # (a bound on a broken test)
        await counted.wait()  # three polls, nothing new
        assert reads["steps"] == 0
        gate.set()
        seen = [name async for name, _ in events(task)]
    assert seen[-1] == "end" and reads["steps"] >= 1  # (the end reads them all)
