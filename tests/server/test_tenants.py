"""Many people on one server, over real HTTP: tenants, idempotency conflicts, load shedding,
strict JSON, bodies without a content type, and the metrics port."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from legion.errors import ConfigError
from legion.llm.capacity import Capacity
from legion.llm.client import LLMClient, Route
from legion.llm.types import ChatResponse, Usage
from legion.server import ServerSettings
from legion.server.keys import new_key
from legion.store.types import TaskQuery
from legion.task import NewTask, TaskStatus
from legion.testing import FakeClock, ScriptedProvider
from tests.server import apps
from tests.server.conftest import Api, StartApi, next_event
from tests.server.test_ops import Samples


async def tenant_key(api: Api, tenant: str, *, admin: bool = False) -> str:
    key = new_key(f"{tenant}-key", time.time(), tenant=tenant, admin=admin)
    await api.runtime.store.add_api_key(key.record)
    return key.token


async def call(
    api: Api, key: str, method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, Any]:
    return await api.call(method, path, body=body, headers={**api.auth(key), **headers})


async def counted(api: Api, key: str, finished: int) -> dict[str, Any]:
    """The statistics of ``key`` once the monitor has counted ``finished`` tasks of its
    own: a sample reads the store's event feed, which on PostgreSQL holds back the events
    of transactions still open then, so the finish may come with a later sample."""
    while True:
        await api.server.state.monitor.sample()
        _, stats = await call(api, key, "GET", "/v1/statistics")
        if stats["totals"]["finished"] >= finished:
            return dict(stats)


async def test_a_tenant_sees_and_changes_only_its_own_tasks(
    any_api: Api, gate: asyncio.Event
) -> None:
    acme, globex = await tenant_key(any_api, "acme"), await tenant_key(any_api, "globex")
    admin = await tenant_key(any_api, "ops", admin=True)
    status, mine = await call(any_api, acme, "POST", "/v1/tasks", {"agent": "held", "input": 1})
    assert status == 201
    _, theirs = await call(
        any_api, globex, "POST", "/v1/tasks", {"agent": "work", "input": {"n": 2}}
    )
    missing = 10**9

    # Reads: the other tenant's task answers exactly like a missing one.
    for path in ("/v1/tasks/{}", "/v1/tasks/{}/events", "/v1/tasks/{}/attempts"):
        other = await call(any_api, globex, "GET", path.format(mine["id"]))
        absent = await call(any_api, globex, "GET", path.format(missing))
        assert other[0] == absent[0] == 404
        assert other[1]["detail"] == absent[1]["detail"].replace(str(missing), str(mine["id"]))
    status, got = await call(any_api, acme, "GET", f"/v1/tasks/{mine['id']}")
    assert status == 200 and got["tenant"] == "acme"
    status, got = await call(any_api, acme, "GET", f"/v1/tasks/{mine['id']}/attempts")
    assert status == 200 and got == {"attempts": []}  # running: none has ended yet

    # Changes: cancel and retry of the other's task are 404, and change nothing.
    for action in (":cancel", ":retry"):
        assert (await call(any_api, globex, "POST", f"/v1/tasks/{mine['id']}{action}"))[0] == 404
    info = await any_api.runtime.get(mine["id"])
    assert info is not None and info.status in (TaskStatus.QUEUED, TaskStatus.RUNNING)

    # Lists: each tenant its own (naming itself changes nothing); asking for another
    # tenant's needs an admin key; admin all.
    _, page = await call(any_api, acme, "GET", "/v1/tasks")
    assert [t["id"] for t in page["tasks"]] == [mine["id"]]
    # (Ids alone: a worker may lease the task between the two reads.)
    _, named = await call(any_api, acme, "GET", "/v1/tasks?tenant=acme")
    assert [t["id"] for t in named["tasks"]] == [mine["id"]] and named["next"] is None
    status, refused = await call(any_api, acme, "GET", "/v1/tasks?tenant=globex")
    assert (status, refused) == (
        403,
        {"detail": "the tenant filter needs an admin key: this key sees tenant 'acme' alone"},
    )
    _, page = await call(any_api, admin, "GET", "/v1/tasks")
    assert {t["id"] for t in page["tasks"]} == {mine["id"], theirs["id"]}
    _, page = await call(any_api, admin, "GET", "/v1/tasks?tenant=globex")
    assert [t["id"] for t in page["tasks"]] == [theirs["id"]]
    # A name no tenant can have is refused as a too long one is (it was an empty page).
    assert (await call(any_api, admin, "GET", "/v1/tasks?tenant=a%20b"))[0] == 422

    # Events: the owner follows its task; an admin may too; then the owner cancels it.
    resp = await any_api.http.get(
        any_api.url + f"/v1/tasks/{mine['id']}/events", headers=any_api.auth(acme)
    )
    any_api.opened.append(resp)
    assert resp.status == 200
    _, first = await next_event(resp, lambda name, _: name == "task")
    assert first["id"] == mine["id"] and first["tenant"] == "acme"
    assert (await call(any_api, admin, "GET", f"/v1/tasks/{mine['id']}"))[0] == 200
    status, cancelled = await call(any_api, acme, "POST", f"/v1/tasks/{mine['id']}:cancel")
    assert status == 200 and cancelled["id"] == mine["id"]


async def queue_parked(api: Api, tasks_of: dict[str, int]) -> None:
    """Queue that many tasks of each tenant, parked far in the future (no worker takes
    them), and let the monitor count them."""
    for tenant, n in tasks_of.items():
        tasks = [NewTask("work", b'{"n": 1}', tenant=tenant, not_before=9e18) for _ in range(n)]
        await api.runtime.store.submit(tasks, time.time())
    await api.server.state.monitor.sample()


async def test_statistics_count_the_tenants_own_tasks(api: Api) -> None:
    acme = await tenant_key(api, "acme")
    await queue_parked(api, {"acme": 2, "globex": 3})
    _, mine = await call(api, acme, "GET", "/v1/statistics")
    assert mine["statuses"]["queued"] == 2
    _, everyone = await api.call("GET", "/v1/statistics")  # the default tenant's key
    assert everyone["statuses"]["queued"] == 0
    admin = await tenant_key(api, "ops", admin=True)
    _, everything = await call(api, admin, "GET", "/v1/statistics")
    assert everything["statuses"]["queued"] == 5


async def test_another_tenants_key_reads_its_own_tasks_alone_in_the_metrics(api: Api) -> None:
    acme = await tenant_key(api, "acme")
    await queue_parked(api, {"acme": 2, "default": 3})

    async def queued(headers: dict[str, str]) -> float:
        async with api.http.get(api.url + "/metrics", headers=headers) as resp:
            assert resp.status == 200
            return Samples(await resp.text())("legion_tasks", status="queued")

    assert await queued(api.auth(acme)) == 2  # (it read the other tenants' 5)
    assert await queued(api.auth()) == 5  # the default tenant's key: the server's own
    admin = await tenant_key(api, "ops", admin=True)
    assert await queued(api.auth(admin)) == 5


async def test_another_tenants_key_reads_no_other_tenants_finished_tasks_in_the_metrics(
    api: Api,
) -> None:
    # The counters (finished, latency, retries) were the server's, every tenant's: a
    # tenant's key read the agents, counts and latencies of the others' tasks.
    acme = await tenant_key(api, "acme")
    _, theirs = await call(api, acme, "POST", "/v1/tasks", {"agent": "work", "input": {"n": 1}})
    ours = []
    for _ in range(2):
        _, sub = await api.call("POST", "/v1/tasks", body={"agent": "doomed", "input": {"n": 1}})
        ours.append(sub["id"])
    for task in (theirs["id"], *ours):
        await api.runtime.result(task)
    await counted(api, acme, 1)
    await counted(api, (await tenant_key(api, "ops", admin=True)), 3)

    async def finished(headers: dict[str, str]) -> dict[tuple[str, str], float]:
        async with api.http.get(api.url + "/metrics", headers=headers) as resp:
            assert resp.status == 200
            text = await resp.text()
        samples = Samples(text)
        return {
            (agent, status): samples("legion_tasks_finished_total", agent=agent, status=status)
            for agent, status in (("work", "succeeded"), ("doomed", "dead"))
            if f'legion_tasks_finished_total{{agent="{agent}",status="{status}"}}' in text
        }

    assert await finished(api.auth(acme)) == {("work", "succeeded"): 1}
    assert await finished(api.auth()) == {("work", "succeeded"): 1, ("doomed", "dead"): 2}


async def test_another_tenants_many_failures_leave_a_tenants_own_in_its_statistics(
    any_api: Api,
) -> None:
    api = any_api
    # The failures shown were the last ten of every tenant's, filtered: eleven of acme's
    # left globex's list empty, while its counts still said one task had died.
    acme, globex = await tenant_key(api, "acme"), await tenant_key(api, "globex")
    doomed = {"agent": "doomed", "input": {"n": 1}}
    _, own = await call(api, globex, "POST", "/v1/tasks", doomed)
    await api.runtime.result(own["id"])
    _, batch = await call(api, acme, "POST", "/v1/tasks:batch", {"tasks": [doomed] * 11})
    for t in batch["tasks"]:
        await api.runtime.result(t["id"])
    while True:  # until the failures were read again after acme's
        await api.server.state.monitor.sample()
        _, theirs = await call(api, acme, "GET", "/v1/statistics")
        if len(theirs["failures"]) == 10:
            break
    assert {f["tenant"] for f in theirs["failures"]} == {"acme"}
    _, stats = await call(api, globex, "GET", "/v1/statistics")
    assert stats["statuses"]["dead"] == 1
    assert [f["id"] for f in stats["failures"]] == [own["id"]]


async def test_a_tenants_statistics_and_progress_count_its_own_work_alone(
    store_url: str, start_api: StartApi, gate: asyncio.Event
) -> None:
    reply = ChatResponse("ok", (), "stop", Usage(200, 11), "m-1", "scripted")
    llm = LLMClient([Route("main", ScriptedProvider([reply]), "m-1", Capacity("main", rpm=600))])
    async with llm:
        api = await start_api(store_url, llm=llm, history=100_000)
        acme = await tenant_key(api, "acme")
        admin = await tenant_key(api, "ops", admin=True)
        # acme: an LLM call that succeeds, a task that dies, one cancelled while it runs.
        ids = []
        for body in (
            {"agent": "ask", "input": "q"},
            {"agent": "doomed", "input": {"n": 1}},
            {"agent": "held", "input": 1},
        ):
            status, sub = await call(api, acme, "POST", "/v1/tasks", body)
            assert status == 201
            ids.append(sub["id"])
        assert (await call(api, acme, "POST", f"/v1/tasks/{ids[2]}:cancel"))[0] == 200
        for task_id in ids:
            await api.runtime.result(task_id)
        # The default tenant: one task of its own, without LLM calls.
        _, own = await api.call("POST", "/v1/tasks", body={"agent": "work", "input": {"n": 1}})
        await api.finished(own["id"])
        everything = await counted(api, admin, 4)

        _, mine = await call(api, acme, "GET", "/v1/statistics")
        _, theirs = await api.call("GET", "/v1/statistics")
        _, default_workers = await api.call("GET", "/v1/workers")
        _, admin_workers = await call(api, admin, "GET", "/v1/workers")
        history = {}
        for name, key in (("default", api.key), ("admin", admin)):
            resp = await api.http.get(api.url + "/v1/progress", headers=api.auth(key))
            api.opened.append(resp)
            _, history[name] = await next_event(resp, lambda name, _: name == "history")
        # The failures are read apart from the counts (not at every sample): acme's
        # progress stream shows them once they are.
        resp = await api.http.get(api.url + "/v1/progress", headers=api.auth(acme))
        api.opened.append(resp)
        _, failing = await next_event(
            resp, lambda name, data: name == "progress" and data["failures"]
        )

    assert mine["totals"] == {
        **ZERO,
        "finished": 3,
        "succeeded": 1,
        "dead": 1,
        "cancelled": 1,
        "input_tokens": 200,
        "output_tokens": 11,
    }
    assert {k: n for k, n in mine["statuses"].items() if n} == {
        "succeeded": 1,
        "dead": 1,
        "cancelled": 1,
    }
    assert ids[1] in [f["id"] for f in failing["failures"]]
    assert {f["tenant"] for f in failing["failures"]} == {"acme"}
    assert failing["totals"] == mine["totals"]
    assert theirs["totals"] == {**ZERO, "finished": 1, "succeeded": 1}
    assert {k: n for k, n in theirs["statuses"].items() if n} == {"succeeded": 1}
    assert theirs["failures"] == []
    assert theirs["point"]["in_flight"] == theirs["point"]["queued"] == 0
    # The routes, the workers' task counts and the scaling decision count every tenant's
    # calls and tasks: a tenant's key is not shown them; an admin key sees them all.
    for seen in (mine, theirs):
        assert seen["routes"] == [] and seen["scaling"] is None
        assert [(w["in_flight"], w["succeeded"]) for w in seen["workers"]] == [(None, None)]
    assert everything["totals"]["finished"] == 4 and everything["totals"]["input_tokens"] == 200
    assert everything["statuses"]["succeeded"] == 2 and everything["scaling"] is not None
    (route,) = everything["routes"]
    assert route["requests"] == 1 and route["input_tokens"] == 200
    assert [w["succeeded"] for w in default_workers] == [None]
    assert [w["succeeded"] for w in admin_workers] == [everything["workers"][0]["succeeded"]]
    # The charts' history: the run's has the sample with acme's tokens, the default
    # tenant's none.
    assert any(p["tokens"] > 0 for p in history["admin"])
    assert history["default"] and all(p["tokens"] == 0 for p in history["default"])


async def test_a_tenant_idle_for_a_whole_history_keeps_no_samples(
    store_url: str, start_api: StartApi, gate: asyncio.Event
) -> None:
    api = await start_api(store_url, history=3)
    acme = await tenant_key(api, "acme")
    monitor = api.server.state.monitor

    async def history() -> list[dict[str, Any]]:
        resp = await api.http.get(api.url + "/v1/progress", headers=api.auth(acme))
        api.opened.append(resp)
        _, points = await next_event(resp, lambda name, _: name == "history")
        return list(points)

    _, sub = await call(api, acme, "POST", "/v1/tasks", {"agent": "work", "input": {"n": 1}})
    await api.runtime.result(sub["id"])
    await counted(api, acme, 1)
    for _ in range(4):  # more than 3 samples with nothing
        await monitor.sample()
    assert await history() == []
    _, stats = await call(api, acme, "GET", "/v1/statistics")
    assert stats["totals"]["succeeded"] == 1 and stats["point"]["throughput"] == 0
    # Work again: samples again.
    await call(api, acme, "POST", "/v1/tasks", {"agent": "held", "input": 1})
    await monitor.sample()
    latest = (await history())[-1]
    assert latest["queued"] + latest["in_flight"] == 1


ZERO = {
    "finished": 0,
    "succeeded": 0,
    "failed": 0,
    "dead": 0,
    "cancelled": 0,
    "retries": 0,
    "input_tokens": 0,
    "output_tokens": 0,
    "cost_usd": 0.0,
}


async def test_an_idempotency_key_sent_with_another_body_is_422(any_api: Api) -> None:
    first = {"agent": "work", "input": {"n": 1}, "key": "order-17"}
    status, created = await any_api.call("POST", "/v1/tasks", body=first)
    assert status == 201
    status, again = await any_api.call("POST", "/v1/tasks", body=first)
    assert (status, again["id"], again["created"]) == (200, created["id"], False)
    for changed in ({**first, "input": {"n": 2}}, {**first, "agent": "doomed"}):
        status, refused = await any_api.call("POST", "/v1/tasks", body=changed)
        assert status == 422
        (error,) = refused["detail"]
        assert error["type"] == "idempotency_conflict" and error["loc"] == ["body", "key"]
        assert "order-17" in error["msg"] and "another agent or input" in error["msg"]
    # Nothing else was stored: the one task, with its first input.
    (only,) = await any_api.runtime.store.list_tasks(TaskQuery())
    assert only.id == created["id"]
    assert (await any_api.finished(created["id"]))["input"] == {"n": 1}


async def test_the_idempotency_key_header_works_as_the_body_field(any_api: Api) -> None:
    body = {"agent": "work", "input": {"n": 1}}
    header = {**any_api.auth(), "Idempotency-Key": "pay-9"}
    status, created = await any_api.call("POST", "/v1/tasks", body=body, headers=header)
    assert status == 201 and created["key"] == "pay-9"
    status, again = await any_api.call("POST", "/v1/tasks", body=body, headers=header)
    assert (status, again["id"]) == (200, created["id"])
    same_in_body = {**body, "key": "pay-9"}
    assert (await any_api.call("POST", "/v1/tasks", body=same_in_body))[1]["id"] == created["id"]
    status, refused = await any_api.call(
        "POST", "/v1/tasks", body={**body, "input": {"n": 5}}, headers=header
    )
    assert status == 422 and refused["detail"][0]["type"] == "idempotency_conflict"
    assert refused["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    status, same = await any_api.call(  # the header wins over the body's key
        "POST", "/v1/tasks", body={**body, "key": "other"}, headers=header
    )
    assert (status, same["id"], same["key"]) == (200, created["id"], "pay-9")


async def test_a_batch_refuses_the_idempotency_key_header(any_api: Api) -> None:
    # Taken for nothing, a batch sent again with it (its answer lost) was queued again.
    batch = {"tasks": [{"agent": "work", "input": {"n": 1}}]}
    header = {**any_api.auth(), "Idempotency-Key": "batch-1"}
    for _ in range(2):
        status, refused = await any_api.call("POST", "/v1/tasks:batch", body=batch, headers=header)
        assert status == 422 and refused["detail"][0]["type"] == "not_for_batches"
        assert refused["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert await any_api.runtime.store.list_tasks(TaskQuery()) == []
    keyed = {"tasks": [{"agent": "work", "input": {"n": 1}, "key": "batch-1/0"}]}
    first = await any_api.call("POST", "/v1/tasks:batch", body=keyed)
    again = await any_api.call("POST", "/v1/tasks:batch", body=keyed)
    assert first[1]["tasks"][0]["id"] == again[1]["tasks"][0]["id"]


async def test_a_non_ascii_idempotency_key_header_is_the_same_key_as_in_the_body(
    api: Api,
) -> None:
    host, port = api.url.removeprefix("http://").rsplit(":", 1)

    async def post(key_header: bytes) -> tuple[int, Any]:
        body = b'{"agent": "work", "input": {"n": 1}}'
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                b"Idempotency-Key: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (api.key.encode(), key_header, len(body), body)
            )
            answer = await reader.read()
        finally:
            writer.close()
        head, _, payload = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(payload)

    status, created = await post("ключ".encode())
    assert (status, created["key"]) == (201, "ключ")  # (it was stored as mojibake)
    body = {"agent": "work", "input": {"n": 1}, "key": "ключ"}
    assert (await api.call("POST", "/v1/tasks", body=body))[1]["id"] == created["id"]
    status, refused = await post(b"\xff\xfe")
    assert status == 422 and refused["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    # Its length is counted in characters, as the body's key's is (not in bytes).
    longest = "é" * 500
    status, created = await post(longest.encode())
    assert (status, created["key"]) == (201, longest)
    status, refused = await post(("é" * 501).encode())
    assert status == 422 and refused["detail"][0]["type"] == "string_too_long"
    assert refused["detail"][0]["loc"] == ["header", "Idempotency-Key"]


async def test_idempotency_keys_are_per_tenant(any_api: Api) -> None:
    acme, globex = await tenant_key(any_api, "acme"), await tenant_key(any_api, "globex")
    a = await call(
        any_api, acme, "POST", "/v1/tasks", {"agent": "work", "input": {"n": 1}, "key": "k"}
    )
    b = await call(
        any_api, globex, "POST", "/v1/tasks", {"agent": "work", "input": {"n": 2}, "key": "k"}
    )
    assert a[0] == b[0] == 201 and a[1]["id"] != b[1]["id"]
    assert a[1]["key"] == b[1]["key"] == "k"


async def test_a_session_with_the_stores_tenant_mark_is_refused_at_submit(api: Api) -> None:
    # It was taken (201), and the task died at its first use of memory, with a message
    # about its idempotency key.
    acme = await tenant_key(api, "acme")
    for key in (acme, api.key):
        body = {"agent": "work", "input": {"n": 1}, "session": "\x1fbeta\x1fs"}
        status, refused = await call(api, key, "POST", "/v1/tasks", body)
        assert status == 422, refused
        assert refused["detail"][0]["loc"] == ["body", "session"]
    assert await api.runtime.store.list_tasks(TaskQuery()) == []
    try:
        await api.runtime.submit(apps.work, {"n": 1}, session="\x1fs")
    except ConfigError as exc:
        assert str(exc) == "a session may not start with the character U+001F"
    else:
        raise AssertionError("Runtime.submit took the session")


async def test_a_batch_with_a_conflicting_key_queues_nothing(api: Api) -> None:
    await api.call("POST", "/v1/tasks", body={"agent": "work", "input": {"n": 1}, "key": "x"})
    batch = [
        {"agent": "work", "input": {"n": 7}, "key": "new"},
        {"agent": "work", "input": {"n": 8}, "key": "x"},
    ]
    status, refused = await api.call("POST", "/v1/tasks:batch", body={"tasks": batch})
    assert status == 422
    assert [e["loc"] for e in refused["detail"]] == [["body", "tasks", 1, "key"]]
    assert len(await api.runtime.store.list_tasks(TaskQuery())) == 1
    twice = [{"agent": "work", "input": {"n": 1}, "key": "y"}, {"agent": "work", "key": "y"}]
    assert (await api.call("POST", "/v1/tasks:batch", body={"tasks": twice}))[0] == 422


async def load(
    api: Api, key: str, n: int, *, concurrency: int
) -> AsyncIterator[tuple[int, Any, str | None]]:
    """A bounded load generator: ``n`` submissions, at most ``concurrency`` at once;
    yields each answer's status, body and Retry-After."""
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> tuple[int, Any, str | None]:
        async with (
            slots,
            api.http.post(
                api.url + "/v1/tasks",
                json={"agent": "work", "input": {"n": i}, "key": f"load-{i}"},
                headers=api.auth(key),
            ) as resp,
        ):
            return resp.status, await resp.json(), resp.headers.get("Retry-After")

    for answer in asyncio.as_completed([one(i) for i in range(n)]):
        yield await answer


async def test_a_tenant_over_its_submit_rate_is_shed_with_429_and_nothing_acked_is_lost(
    store_url: str, start_api: StartApi
) -> None:
    clock = FakeClock()
    # The tenant's rate is the only bound here: the server's own, adapted to how fast it
    # answers, would shed some of the 60 with 503 on a machine slowed by other work.
    api = await start_api(
        store_url, clock=clock.now, tenant_rate=2.0, tenant_burst=20, target_latency=None
    )
    acme, globex = await tenant_key(api, "acme"), await tenant_key(api, "globex")
    answers = [a async for a in load(api, acme, 60, concurrency=16)]
    accepted = [body["id"] for status, body, _ in answers if status == 201]
    shed = [(body, retry) for status, body, retry in answers if status == 429]
    assert len(accepted) == 20 and len(shed) == 40 and len(answers) == 60
    assert all(retry is not None and int(retry) >= 1 for _, retry in shed)
    assert all("submit rate" in body["detail"] for body, _ in shed)
    # Every acknowledged task is in the store, once; nothing shed was stored.
    stored = await api.runtime.store.list_tasks(TaskQuery(tenant="acme", limit=500))
    assert sorted(t.id for t in stored) == sorted(accepted)
    # The other tenant is not slowed by acme's overload.
    status, _ = await call(api, globex, "POST", "/v1/tasks", {"agent": "work", "input": {"n": 1}})
    assert status == 201
    # Time passes: acme gets tokens again, and a shed submission retried is accepted.
    await clock.advance(1.5)  # three tasks' worth
    answers = [a async for a in load(api, acme, 3, concurrency=1)]
    assert {status for status, _, _ in answers} <= {200, 201}
    assert all(body["id"] in accepted for status, body, _ in answers if status == 200)
    assert all(body["id"] not in accepted for status, body, _ in answers if status == 201)


async def test_a_tenant_over_its_queued_tasks_is_shed_with_429(
    start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(f"sqlite:///{tmp_path / 'q.db'}", tenant_max_queued=3)
    acme, globex = await tenant_key(api, "acme"), await tenant_key(api, "globex")
    later = [NewTask("work", b'{"n": 1}', tenant="acme", not_before=9e18) for _ in range(2)]
    await api.runtime.store.submit(later, time.time())
    one = {"agent": "work", "input": {"n": 1}}
    batch = {"tasks": [one, one]}
    status, refused = await call(api, acme, "POST", "/v1/tasks:batch", batch)
    assert status == 429 and refused["detail"] == (
        "tenant 'acme' has 2 queued tasks (this request adds 2); its limit is 3"
    )
    # A batch no wait would let in: 422, not a 429 to send again and again (no Retry-After).
    async with api.http.post(
        api.url + "/v1/tasks:batch", json={"tasks": [one] * 4}, headers=api.auth(globex)
    ) as resp:
        assert resp.status == 422 and "Retry-After" not in resp.headers
        # (a list of errors, as every other 422's detail is)
        assert (await resp.json())["detail"] == [
            {
                "type": "too_many",
                "loc": ["body", "tasks"],
                "msg": "a batch of 4 tasks is more than tenant 'globex' may have queued (its "
                "limit is 3, --tenant-max-queued): send at most 3 per request",
            }
        ]
    assert (await call(api, globex, "POST", "/v1/tasks:batch", batch))[0] == 200
    assert await api.runtime.store.count_queued("acme") == 2
    # The third fills the limit; sent again (its answer was lost), it is answered, not shed.
    keyed = {"agent": "work", "input": {"n": 1}, "key": "the-third"}
    status, first = await call(api, acme, "POST", "/v1/tasks", keyed)
    assert status == 201
    status, again = await call(api, acme, "POST", "/v1/tasks", keyed)
    assert (status, again["id"], again["created"]) == (200, first["id"], False)  # (was 429)
    status, refused = await call(api, acme, "POST", "/v1/tasks", {**keyed, "key": "a-fourth"})
    assert status == 429


async def test_a_tenant_key_gives_no_priority_above_the_cap(
    start_api: StartApi, tmp_path: Path
) -> None:
    """A higher priority runs first, whatever its tenant: with --tenant-max-priority a
    tenant's key cannot put its tasks ahead of the others' past the cap; an admin's can."""
    api = await start_api(f"sqlite:///{tmp_path / 'p.db'}", tenant_max_priority=5)
    acme, ops = await tenant_key(api, "acme"), await tenant_key(api, "ops", admin=True)
    one = {"agent": "work", "input": {"n": 1}}
    status, refused = await call(api, acme, "POST", "/v1/tasks", {**one, "priority": 6})
    assert status == 422
    assert refused["detail"] == [
        {
            "type": "priority_not_allowed",
            "loc": ["body", "priority"],
            "msg": "priority 6 is above 5, the highest this server lets a tenant's key give "
            "a task (--tenant-max-priority); an admin key may give any",
        }
    ]
    # A batch with one task above the cap queues none of them.
    batch = {"tasks": [{**one, "priority": 5}, {**one, "priority": 2**31 - 1}]}
    status, refused = await call(api, acme, "POST", "/v1/tasks:batch", batch)
    assert status == 422
    assert [e["loc"] for e in refused["detail"]] == [["body", "tasks", 1, "priority"]]
    assert await api.runtime.store.count_queued("acme") == 0
    status, queued = await call(api, acme, "POST", "/v1/tasks", {**one, "priority": 5})
    assert status == 201
    status, urgent = await call(api, ops, "POST", "/v1/tasks", {**one, "priority": 9})
    assert status == 201
    with sqlite3.connect(tmp_path / "p.db") as db:  # (a task's priority is not shown)
        priorities = dict(db.execute("SELECT id, priority FROM tasks"))
    assert priorities == {queued["id"]: 5, urgent["id"]: 9}


def test_the_priority_cap_is_a_priority() -> None:
    with pytest.raises(ConfigError, match="tenant_max_priority must be from"):
        ServerSettings(tenant_max_priority=2**31)


async def test_requests_past_the_bound_in_progress_get_503_with_retry_after(
    start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(f"sqlite:///{tmp_path / 'b.db'}", max_in_progress=1)
    release = asyncio.Event()
    sent = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"agent": "work", '
        sent.set()
        await release.wait()
        yield b'"input": {"n": 1}}'

    holding = asyncio.create_task(
        api.http.post(api.url + "/v1/tasks", data=slow_body(), headers=api.auth())
    )
    await sent.wait()
    # The held request is in progress once its first bytes are read: wait for the server
    # to answer the next one with 503 (each try is a real request, not a sleep).
    while True:
        async with api.http.get(api.url + "/v1/tasks", headers=api.auth()) as resp:
            if resp.status == 503:
                assert resp.headers["Retry-After"] == "1"
                assert "saturated" in (await resp.json())["detail"]
                break
            assert resp.status == 200
    async with api.http.get(api.url + "/healthz") as resp:  # never shed
        assert resp.status == 200
    release.set()
    resp = await holding
    assert resp.status == 201
    resp.release()
    assert (await api.call("GET", "/v1/tasks"))[0] == 200


async def test_strict_json_refuses_nan_infinity_and_out_of_range_numbers(api: Api) -> None:
    bodies = [
        b'{"agent": "work", "input": {"n": NaN}}',
        b'{"agent": "work", "input": {"n": Infinity}}',
        b'{"agent": "work", "input": {"n": 1e400}}',
        b'{"agent": "work", "input": {"n": -1e400}}',
        b'{"agent": "work", "input": {"n": 123456789012345678901234567890}}',  # (a float)
    ]
    for raw in bodies:
        status, body = await post_raw(api, raw, "application/json")
        assert status == 422, raw
        assert body["detail"][0]["type"] == "json_invalid" and body["detail"][0]["loc"] == ["body"]
    # JSON nested past what an agent's input check reads (three messages, none with the
    # number, told one depth from another); past orjson's own limit too (it said
    # "json_invalid: depth limit exceeded")
    for levels in (250, 100_000):
        deep = b'{"agent": "work", "input": {"n": ' + b"[" * levels + b"]" * levels + b"}}"
        status, body = await post_raw(api, deep, None)
        assert status == 422 and body["detail"][0]["type"] == "json_too_deep", levels
        assert body["detail"][0]["msg"] == (
            "the body is nested deeper than 200 levels of lists and objects, the most legion takes"
        )
    status, body = await post_raw(api, b'{"agent": "work", "input": "\xff\xfe"}', None)
    assert status == 422 and body["detail"][0]["type"] == "utf8"
    assert "UTF-8" in body["detail"][0]["msg"]
    assert await api.runtime.store.list_tasks(TaskQuery()) == []
    # A UTF-8 body after a byte order mark (what some clients write) is read, not called
    # "not UTF-8 text"
    bom = b'\xef\xbb\xbf{"agent": "work", "input": {"n": 1}}'
    status, body = await post_raw(api, bom, "application/json")
    assert status == 201, body


async def post_raw(api: Api, raw: bytes, content_type: str | None) -> tuple[int, Any]:
    headers = {**api.auth()}
    if content_type is not None:
        headers["Content-Type"] = content_type
    async with api.http.post(
        api.url + "/v1/tasks", data=raw, headers=headers, skip_auto_headers=["Content-Type"]
    ) as resp:
        return resp.status, await resp.json()


async def test_a_json_body_needs_no_content_type(api: Api) -> None:
    raw = b'{"agent": "work", "input": {"n": 3}}'
    for content_type in (None, "application/x-www-form-urlencoded", "text/plain"):
        status, body = await post_raw(api, raw, content_type)
        assert status == 201, (content_type, body)
        assert (await api.finished(body["id"]))["output"]["n"] == 3


async def test_options_on_cancel_and_retry_allow_post(api: Api) -> None:
    for action in (":cancel", ":retry"):
        async with api.http.options(api.url + f"/v1/tasks/5{action}", headers=api.auth()) as r:
            assert r.status == 405 and r.headers["Allow"] == "POST"
    async with api.http.options(api.url + "/v1/tasks/5", headers=api.auth()) as r:
        assert r.headers["Allow"] == "GET"
    async with api.http.options(api.url + "/v1/tasks", headers=api.auth()) as r:
        assert r.status == 405 and r.headers["Allow"] == "GET, POST"
    for action in (":cancel", ":retry"):  # not the task route, whose path matches too
        async with api.http.get(api.url + f"/v1/tasks/5{action}", headers=api.auth()) as r:
            assert r.status == 405 and r.headers["Allow"] == "POST"


async def test_an_unknown_task_action_is_not_found(api: Api) -> None:
    # POST /v1/tasks/1:foo answered 405 "Method Not Allowed", as if POST were wrong.
    for method in ("POST", "GET", "OPTIONS", "DELETE"):
        async with api.http.request(method, api.url + "/v1/tasks/1:foo", headers=api.auth()) as r:
            assert r.status == 404, method
            assert ":cancel, :retry and :signal" in (await r.json())["detail"]


async def test_metrics_are_served_without_a_key_on_their_own_port(
    start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(f"sqlite:///{tmp_path / 'm.db'}", metrics_port=0)
    url = api.server.metrics_url
    assert url is not None and url.startswith("http://127.0.0.1:") and url != api.url
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        assert resp.status == 200
        assert "legion_tasks" in await resp.text()
        async with http.get(url + "/v1/tasks") as other:
            assert other.status == 404  # that port serves metrics alone
    async with aiohttp.ClientSession() as http, http.get(api.url + "/metrics") as resp:
        assert resp.status == 401  # the API's own port still needs a key


async def test_head_is_answered_as_get_without_a_body(api: Api) -> None:
    # A load balancer probing /healthz with HEAD got 405.
    for path, headers, status in (
        ("/healthz", {}, 200),
        ("/v1/key", api.auth(), 200),
        ("/v1/key", {}, 401),
    ):
        async with api.http.head(api.url + path, headers=headers) as resp:
            assert resp.status == status, path
            assert await resp.read() == b""
    async with api.http.get(api.url + "/healthz") as resp:
        assert await resp.json() == {"status": "ok"}


async def test_a_path_with_a_slash_too_many_is_404_not_a_redirect_to_the_callers_host(
    api: Api,
) -> None:
    headers = {**api.auth(), "Host": "evil.example"}
    async with api.http.get(api.url + "/v1/tasks/", headers=headers, allow_redirects=False) as r:
        assert r.status == 404 and "location" not in r.headers
