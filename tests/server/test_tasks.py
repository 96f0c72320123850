"""Task routes over real HTTP: submit, batch, validation, get, list and pages, cancel, retry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from tests.server.conftest import Api, StartApi, admin_key, next_event


async def test_submit_then_get_the_task_with_its_steps(any_api: Api) -> None:
    status, body = await any_api.call(
        "POST", "/v1/tasks", body={"agent": "work", "input": {"n": 7}}
    )
    assert status == 201
    assert body == {"id": body["id"], "status": "queued", "key": None, "created": True}
    task = await any_api.finished(body["id"])
    assert task["status"] == "succeeded"
    assert task["output"] == {"n": 7, "steps": ["a", "b1", "b2"]}
    assert task["input"] == {"n": 7}
    assert task["attempts"] == 1 and task["error"] is None and task["usage"] is None
    assert [s["key"] for s in task["steps"]] == ["a", "b1", "b2"]
    assert all(s["finished_at"] >= s["started_at"] for s in task["steps"])
    # A poll of its status without them (a task of 10,000 steps answered 100 MB each time)
    status, bare = await any_api.call("GET", f"/v1/tasks/{body['id']}?steps=false")
    assert status == 200 and bare["steps"] is None
    assert {k: v for k, v in bare.items() if k != "steps"} == {
        k: v for k, v in task.items() if k != "steps"
    }


async def test_a_task_lists_its_attempts_with_running_and_waiting_time(any_api: Api) -> None:
    _, sub = await any_api.call("POST", "/v1/tasks", body={"agent": "flaky", "input": {"n": 4}})
    task = await any_api.finished(sub["id"])
    assert task["status"] == "succeeded" and task["attempts"] == 2
    status, body = await any_api.call("GET", f"/v1/tasks/{sub['id']}/attempts")
    assert status == 200
    first, second = body["attempts"]
    assert (first["attempt"], first["outcome"]) == (1, "retry")
    assert first["error"] == {"type": "ConnectionError", "message": "flaky", "traceback": None}
    assert first["waiting_seconds"] > 0  # the capacity wait is kept apart from running
    assert first["running_seconds"] >= 0 and first["finished_at"] >= first["started_at"]
    assert (second["attempt"], second["outcome"], second["error"]) == (2, "succeeded", None)
    assert second["waiting_seconds"] == 0
    assert first["worker"] and second["worker"]
    status, body = await any_api.call("GET", "/v1/tasks/999999999/attempts")
    assert status == 404


async def test_an_idempotency_key_answers_the_first_task(any_api: Api) -> None:
    first = await any_api.call(
        "POST", "/v1/tasks", body={"agent": "work", "input": {"n": 1}, "key": "order-17"}
    )
    again = await any_api.call(
        "POST", "/v1/tasks", body={"agent": "work", "input": {"n": 1}, "key": "order-17"}
    )
    assert first[0] == 201 and again[0] == 200
    assert again[1]["id"] == first[1]["id"] and again[1]["created"] is False
    assert (await any_api.finished(first[1]["id"]))["input"] == {"n": 1}


async def test_a_batch_is_submitted_in_order(any_api: Api) -> None:
    tasks = [
        {"agent": "work", "input": {"n": 1}, "key": "b-1"},
        {"agent": "doomed", "input": {"n": 2}},
        {"agent": "work", "input": {"n": 3}, "priority": 5},
        {"agent": "work", "input": {"n": 1}, "key": "b-1"},
    ]
    status, body = await any_api.call("POST", "/v1/tasks:batch", body={"tasks": tasks})
    assert status == 200
    out = body["tasks"]
    assert [t["created"] for t in out] == [True, True, True, False]
    assert out[3]["id"] == out[0]["id"]
    results = [await any_api.finished(t["id"]) for t in out[:3]]
    assert [r["agent"] for r in results] == ["work", "doomed", "work"]
    assert [r["status"] for r in results] == ["succeeded", "dead", "succeeded"]


async def test_input_is_checked_against_the_agents_schema(api: Api) -> None:
    status, body = await api.call(
        "POST", "/v1/tasks", body={"agent": "order", "input": {"item": {"sku": "", "quantity": 0}}}
    )
    assert status == 422
    assert {tuple(e["loc"]) for e in body["detail"]} == {
        ("body", "input", "item", "sku"),
        ("body", "input", "item", "quantity"),
    }
    assert all(e["msg"] and e["type"] for e in body["detail"])
    status, body = await api.call("POST", "/v1/tasks", body={"agent": "work", "input": {"x": 1}})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "input"]
    assert "takes n, delay" in body["detail"][0]["msg"]
    assert (await api.call("GET", "/v1/tasks"))[1]["tasks"] == []  # nothing was queued


async def test_unknown_agents_and_fields_are_422(api: Api) -> None:
    status, body = await api.call("POST", "/v1/tasks", body={"agent": "nope", "input": 1})
    assert status == 422
    assert body["detail"] == [
        {
            "type": "unknown_agent",
            "loc": ["body", "agent"],
            "msg": "no agent named 'nope' here "
            "(this server runs: approve, ask, clan, doomed, family, flaky, held, late_family, "
            "order, orphaning, stepwise, work)",
        }
    ]
    status, body = await api.call("POST", "/v1/tasks", body={"agent": "work", "inptu": {}})
    assert status == 422 and body["detail"][0]["loc"] == ["body", "inptu"]
    status, body = await api.call("POST", "/v1/tasks", body={"agent": "work", "input": 2**70})
    assert status == 422 and "JSON" in body["detail"][0]["msg"]


async def test_unknown_and_missing_input_fields_are_named(api: Api) -> None:
    status, body = await api.call(
        "POST", "/v1/tasks", body={"agent": "ask", "input": {"question": "x", "extra": 1}}
    )
    assert status == 422
    assert body["detail"] == [
        {
            "type": "agent_input",
            "loc": ["body", "input"],
            "msg": "input does not fit agent 'ask': unknown field(s) extra (it takes question)",
        },
        {
            "type": "extra_forbidden",
            "loc": ["body", "input", "extra"],
            "msg": "unknown field extra (agent 'ask' takes question)",
        },
    ]
    status, body = await api.call("POST", "/v1/tasks", body={"agent": "ask", "input": {"q": 1}})
    assert status == 422
    assert body["detail"][0]["msg"] == (
        "input does not fit agent 'ask': unknown field(s) q (it takes question); "
        "missing field(s) question"
    )
    assert [(e["type"], e["loc"]) for e in body["detail"][1:]] == [
        ("extra_forbidden", ["body", "input", "q"]),
        ("missing", ["body", "input", "question"]),
    ]
    # The same for an agent of many parameters, and in a batch, where each task is.
    tasks = [{"agent": "work", "input": {"n": 1}}, {"agent": "work", "input": {"x": 1}}]
    status, body = await api.call("POST", "/v1/tasks:batch", body={"tasks": tasks})
    assert status == 422
    assert [(e["type"], e["loc"]) for e in body["detail"]] == [
        ("agent_input", ["body", "tasks", 1, "input"]),
        ("extra_forbidden", ["body", "tasks", 1, "input", "x"]),
        ("missing", ["body", "tasks", 1, "input", "n"]),
    ]
    # A value that is the single parameter's, of the wrong type, is pydantic's error.
    status, body = await api.call("POST", "/v1/tasks", body={"agent": "ask", "input": 5})
    assert status == 422
    assert [(e["type"], e["loc"]) for e in body["detail"]] == [
        ("string_type", ["body", "input", "question"])
    ]
    assert (await api.call("GET", "/v1/tasks"))[1]["tasks"] == []  # nothing was queued


async def test_a_batch_with_one_bad_task_queues_nothing(api: Api) -> None:
    tasks = [{"agent": "work", "input": {"n": 1}}, {"agent": "work", "input": {"n": "x"}}]
    status, body = await api.call("POST", "/v1/tasks:batch", body={"tasks": tasks})
    assert status == 422
    assert body["detail"][0]["loc"] == ["body", "tasks", 1, "input", "n"]
    assert (await api.call("GET", "/v1/tasks"))[1]["tasks"] == []


async def test_a_batch_of_many_bad_tasks_answers_a_bounded_list_of_errors(api: Api) -> None:
    # 8,000 such tasks answered 32 MB of errors, and four at once stalled the server.
    tasks = [{"agent": "work", "input": {"n": "x"}} for _ in range(2000)]
    status, body = await api.call("POST", "/v1/tasks:batch", body={"tasks": tasks})
    assert status == 422
    *errors, last = body["detail"]
    assert len(errors) == 100 and errors[0]["loc"] == ["body", "tasks", 0, "input", "n"]
    assert last["type"] == "too_many_errors"
    assert (
        last["msg"] == "100 errors shown, in the first 101 of 2000 tasks; the rest were not checked"
    )
    assert (await api.call("GET", "/v1/tasks"))[1]["tasks"] == []


async def test_batches_are_limited(start_api: StartApi, tmp_path: Path) -> None:
    api = await start_api(f"sqlite:///{tmp_path / 'b.db'}", max_batch=2)
    tasks = [{"agent": "work", "input": {"n": i}} for i in range(3)]
    status, body = await api.call("POST", "/v1/tasks:batch", body={"tasks": tasks})
    assert status == 422 and body["detail"][0]["msg"] == "at most 2 tasks"


async def test_large_bodies_are_refused_with_413(start_api: StartApi, tmp_path: Path) -> None:
    api = await start_api(f"sqlite:///{tmp_path / 'l.db'}", max_body_bytes=4096)
    big = {"agent": "work", "input": {"n": 1, "pad": "x" * 5000}}
    status, body = await api.call("POST", "/v1/tasks", body=big)
    assert status == 413 and "larger than 4096 bytes" in body["detail"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b" " * 1000

    async with api.http.post(
        api.url + "/v1/tasks",
        data=chunks(),
        headers={**api.auth(), "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413
        assert "larger than" in (await resp.json())["detail"]


async def test_get_unknown_task_is_404(api: Api) -> None:
    assert await api.call("GET", "/v1/tasks/12345") == (404, {"detail": "no task 12345"})
    assert (await api.call("GET", "/v1/tasks/0"))[0] == 422
    assert (await api.call("GET", "/v1/tasks/abc"))[0] == 422


async def test_a_dead_tasks_traceback_is_shown_to_an_admin_key_alone(api: Api) -> None:
    # The traceback was in the store and nowhere else: no route, page or command showed
    # it. A tenant's key still never sees one (it shows the agents' code).
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "doomed", "input": {"n": 3}})
    task = await api.finished(sub["id"])
    assert task["status"] == "dead"
    assert task["error"] == {"type": "RuntimeError", "message": "doomed 3", "traceback": None}
    admin = await admin_key(api)
    _, task = await api.call("GET", f"/v1/tasks/{sub['id']}", headers=admin)
    trace = task["error"]["traceback"]
    assert trace.startswith("Traceback (most recent call last)") and "doomed 3" in trace
    assert "raise RuntimeError" in trace  # (the agent's own line)
    _, page = await api.call("GET", "/v1/tasks?status=dead", headers=admin)
    assert [t["error"]["traceback"] for t in page["tasks"]] == [None]  # lists stay small


async def test_a_task_that_succeeded_after_a_failure_has_no_error(api: Api) -> None:
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "flaky", "input": {"n": 4}})
    task = await api.finished(sub["id"])
    assert (task["status"], task["attempts"], task["error"]) == ("succeeded", 2, None)
    _, page = await api.call("GET", "/v1/tasks?status=succeeded")
    assert [t["error"] for t in page["tasks"]] == [None]
    _, attempts = await api.call("GET", f"/v1/tasks/{sub['id']}/attempts")
    assert attempts["attempts"][0]["error"]["message"] == "flaky"  # (history keeps it)


async def test_list_filters_and_pages(any_api: Api) -> None:
    before = time.time()
    tasks = [{"agent": "work", "input": {"n": i}} for i in range(5)]
    tasks += [{"agent": "doomed", "input": {"n": i}} for i in range(3)]
    _, body = await any_api.call("POST", "/v1/tasks:batch", body={"tasks": tasks})
    ids = [t["id"] for t in body["tasks"]]
    for task_id in ids:
        await any_api.runtime.result(task_id)

    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        status, page = await any_api.call("GET", "/v1/tasks", params=params)
        assert status == 200
        seen += [t["id"] for t in page["tasks"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)

    _, dead = await any_api.call("GET", "/v1/tasks", params={"status": "dead"})
    assert sorted(t["id"] for t in dead["tasks"]) == ids[5:]
    both = [("status", "dead"), ("status", "succeeded"), ("agent", "work")]
    _, work = await any_api.call("GET", "/v1/tasks", params=both)
    assert sorted(t["id"] for t in work["tasks"]) == ids[:5]
    _, none = await any_api.call("GET", "/v1/tasks", params={"until": before})
    assert none == {"tasks": [], "next": None}
    _, recent = await any_api.call("GET", "/v1/tasks", params={"since": before, "limit": 100})
    assert len(recent["tasks"]) == 8 and recent["next"] is None
    # A page that holds the last task says no page follows (not a last one, empty).
    _, full = await any_api.call("GET", "/v1/tasks", params={"since": before, "limit": 8})
    assert len(full["tasks"]) == 8 and full["next"] is None
    _, half = await any_api.call("GET", "/v1/tasks", params={"since": before, "limit": 4})
    _, rest = await any_api.call(
        "GET", "/v1/tasks", params={"since": before, "limit": 4, "cursor": half["next"]}
    )
    assert [len(half["tasks"]), len(rest["tasks"]), rest["next"]] == [4, 4, None]


async def test_bad_list_parameters_are_422(api: Api) -> None:
    bad = ({"cursor": "garbage"}, {"limit": 0}, {"status": "no"}, {"since": "nan"}, {"agent": "\0"})
    for params in bad:
        status, body = await api.call("GET", "/v1/tasks", params=params)
        assert status == 422 and body["detail"][0]["loc"][0] == "query", params


async def test_cancel_a_queued_or_running_task(api: Api, gate: asyncio.Event) -> None:
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "held", "input": {"n": 1}})
    events = await api.stream(f"/v1/tasks/{sub['id']}/events")
    await next_event(events, lambda name, data: name == "step")  # it is running now
    status, body = await api.call("POST", f"/v1/tasks/{sub['id']}:cancel")
    assert (status, body) == (200, {"id": sub["id"], "status": "running"})  # asked to stop
    assert (await api.finished(sub["id"]))["status"] == "cancelled"
    # Cancelling it again changes nothing and says so: it is cancelled.
    status, body = await api.call("POST", f"/v1/tasks/{sub['id']}:cancel")
    assert (status, body) == (200, {"id": sub["id"], "status": "cancelled"})
    assert (await api.call("POST", "/v1/tasks/999:cancel"))[0] == 404


async def test_a_task_that_finished_otherwise_cannot_be_cancelled(api: Api) -> None:
    ok = await api.call("POST", "/v1/tasks", body={"agent": "work", "input": {"n": 1}})
    bad = await api.call("POST", "/v1/tasks", body={"agent": "doomed", "input": {"n": 1}})
    for (_, sub), ended in ((ok, "succeeded"), (bad, "dead")):
        assert (await api.finished(sub["id"]))["status"] == ended
        status, body = await api.call("POST", f"/v1/tasks/{sub['id']}:cancel")
        assert (status, body) == (
            409,
            {
                "detail": f"task {sub['id']} is {ended}: only queued, waiting or running "
                "tasks can be cancelled"
            },
        )
        assert (await api.finished(sub["id"]))["status"] == ended  # unchanged


async def test_retry_a_dead_task(api: Api) -> None:
    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "doomed", "input": {"n": 1}})
    await api.finished(sub["id"])
    status, body = await api.call("POST", f"/v1/tasks/{sub['id']}:retry")
    assert (status, body) == (200, {"id": sub["id"], "status": "queued"})
    again = await api.finished(sub["id"])
    assert again["status"] == "dead" and again["attempts"] == 1
    _, ok = await api.call("POST", "/v1/tasks", body={"agent": "work", "input": {"n": 1}})
    await api.finished(ok["id"])
    status, body = await api.call("POST", f"/v1/tasks/{ok['id']}:retry")
    assert status == 409 and body["detail"] == (
        f"task {ok['id']} is succeeded: only dead, failed or cancelled tasks can be retried"
    )
    assert (await api.call("POST", "/v1/tasks/999:retry"))[0] == 404


async def test_non_json_bodies_are_422(api: Api) -> None:
    async with api.http.post(
        api.url + "/v1/tasks",
        data=b"{not json",
        headers={**api.auth(), "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 422
        assert "Traceback" not in await resp.text()


async def test_a_list_cuts_a_long_error_message_and_the_task_shows_what_is_kept(
    api: Api,
) -> None:
    # A list of 50 tasks whose agents raised 5 MB messages was 250 MB, polled by the
    # dashboard every 2 s. (A message is kept to its start and end, 16 KB.)
    from legion.task import MAX_MESSAGE, capped

    _, sub = await api.call("POST", "/v1/tasks", body={"agent": "doomed", "input": {"n": 50_000}})
    await api.runtime.result(sub["id"])
    kept = capped("E" * 50_000, MAX_MESSAGE)
    _, page = await api.call("GET", "/v1/tasks")
    (listed,) = page["tasks"]
    assert listed["error"]["message"] == "E" * 2000 + (
        f"... ({len(kept) - 2000:,} more characters: the task has it)"
    )
    _, whole = await api.call("GET", f"/v1/tasks/{sub['id']}")
    assert whole["error"]["message"] == kept
