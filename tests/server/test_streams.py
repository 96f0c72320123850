"""Server-sent events over real HTTP: a task's changes and steps; the run's progress."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from legion.server.keys import new_key
from tests.server.conftest import Api, events, next_event


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
