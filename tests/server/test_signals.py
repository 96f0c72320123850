"""Waiting routes over real HTTP: list waiting tasks with their prompts, signal one."""

from __future__ import annotations

import asyncio

from tests.server.conftest import Api


async def _waiting(api: Api, task_id: int) -> dict[str, object]:
    for _ in range(2000):
        status, body = await api.call("GET", "/v1/waiting")
        assert status == 200
        found = [t for t in body["tasks"] if t["id"] == task_id]
        if found:
            return found[0]  # type: ignore[no-any-return]
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} never waited")


async def test_an_approval_is_listed_and_a_signal_ends_it(any_api: Api) -> None:
    status, sub = await any_api.call(
        "POST", "/v1/tasks", body={"agent": "approve", "input": {"amount": 5}}
    )
    assert status == 201
    shown = await _waiting(any_api, sub["id"])
    assert shown["prompt"] == "pay 5?" and shown["agent"] == "approve"
    # A NUL in the event name is the request's fault, on every store: 422, not a 503 a
    # client would retry for ever (PostgreSQL's text refuses it).
    nul = await any_api.call("POST", f"/v1/tasks/{sub['id']}:signal", body={"event": "go\x00"})
    assert nul[0] == 422, nul
    status, body = await any_api.call(
        "POST",
        f"/v1/tasks/{sub['id']}:signal",
        body={"event": "approval", "data": {"approved": True}},
    )
    assert (status, body) == (200, {"id": sub["id"], "status": "queued"})
    task = await any_api.finished(sub["id"])
    assert task["status"] == "succeeded" and task["output"] == {"approved": True}
    again = await any_api.call("POST", f"/v1/tasks/{sub['id']}:signal", body={"event": "approval"})
    assert again[0] == 409
    assert (await any_api.call("POST", "/v1/tasks/999999:signal", body={"event": "x"}))[0] == 404
    assert (await any_api.call("POST", f"/v1/tasks/{sub['id']}:signal", body={"event": ""}))[
        0
    ] == 422


async def test_a_signal_body_is_strict_json_whatever_its_content_type(api: Api) -> None:
    status, sub = await api.call(
        "POST", "/v1/tasks", body={"agent": "approve", "input": {"amount": 5}}
    )
    assert status == 201
    await _waiting(api, sub["id"])
    url = f"{api.url}/v1/tasks/{sub['id']}:signal"

    async def post(raw: bytes, content_type: str) -> tuple[int, object]:
        headers = {**api.auth(), "Content-Type": content_type}
        async with api.http.post(url, data=raw, headers=headers) as resp:
            return resp.status, await resp.json()

    # NaN is not JSON: refused, as on the submit routes, and the task still waits.
    status, body = await post(b'{"event": "approval", "data": NaN}', "application/json")
    assert status == 422, body
    assert body["detail"][0]["type"] == "json_invalid"  # type: ignore[index]
    assert (await _waiting(api, sub["id"]))["id"] == sub["id"]
    # A field it does not know (a typo of "data") is refused, not dropped for null data.
    status, body = await post(b'{"event": "approval", "dat": 1}', "application/json")
    assert status == 422, body
    assert body["detail"][0]["type"] == "extra_forbidden"  # type: ignore[index]
    # Data nested past what can be stored: 422, not an internal error.
    deep = b'{"event": "approval", "data": ' + b"[" * 300 + b"]" * 300 + b"}"
    status, body = await post(deep, "application/json")
    assert status == 422, body
    assert body["detail"][0]["loc"] == ["body"]  # type: ignore[index]
    assert body["detail"][0]["type"] == "json_too_deep"  # type: ignore[index]
    assert (await _waiting(api, sub["id"]))["id"] == sub["id"]
    # A wait's number is a JSON integer: `true` and `"1"` were taken for 1.
    for number in (b"true", b'"1"'):
        raw = b'{"event": "approval", "data": {"approved": true}, "waiting": ' + number + b"}"
        status, body = await post(raw, "application/json")
        assert status == 422, (number, body)
        assert body["detail"][0]["loc"] == ["body", "waiting"]  # type: ignore[index]
    assert (await _waiting(api, sub["id"]))["id"] == sub["id"]
    # What `curl -d '{...}'` sends, as docs/waiting.md prints it.
    raw = b'{"event": "approval", "data": {"approved": true}}'
    status, body = await post(raw, "application/x-www-form-urlencoded")
    assert (status, body) == (200, {"id": sub["id"], "status": "queued"})
    task = await api.finished(sub["id"])
    assert task["status"] == "succeeded" and task["output"] == {"approved": True}


async def test_the_openapi_document_describes_the_signal_body(api: Api) -> None:
    status, doc = await api.call("GET", "/openapi.json")
    assert status == 200
    route = doc["paths"]["/v1/tasks/{task_id}:signal"]["post"]
    ref = route["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["required"] == ["event"]
    assert set(schema["properties"]) == {"event", "data", "waiting"}


async def test_an_answer_to_one_wait_is_refused_once_that_wait_has_ended(any_api: Api) -> None:
    # A double click on "approve" sent two approval signals: the second was kept, and
    # answered the task's next approval, a prompt nobody saw.
    api = any_api
    status, sub = await api.call(
        "POST", "/v1/tasks", body={"agent": "approve", "input": {"amount": 5}}
    )
    assert status == 201
    shown = await _waiting(api, sub["id"])
    assert (shown["event"], shown["count"]) == ("approval", 1)
    answer = {"event": "approval", "data": {"approved": True}, "waiting": shown["count"]}
    first = await api.call("POST", f"/v1/tasks/{sub['id']}:signal", body=answer)
    second = await api.call("POST", f"/v1/tasks/{sub['id']}:signal", body=answer)
    assert first == (200, {"id": sub["id"], "status": "queued"})
    assert second[0] == 409, second
    assert "does not wait for signal 'approval' number 1 now" in second[1]["detail"]
    assert await api.runtime.store.signal_data(sub["id"], "approval", 1) is None  # not kept
    task = await api.finished(sub["id"])
    assert task["status"] == "succeeded" and task["output"] == {"approved": True}
    early = {"event": "approval", "waiting": 2}
    assert (await api.call("POST", f"/v1/tasks/{sub['id']}:signal", body=early))[0] == 409


async def test_every_waiting_task_can_be_listed_a_page_at_a_time(any_api: Api) -> None:
    # With more waiting tasks than a page holds, the older ones could not be listed with
    # what they wait for (the limit alone, no cursor).
    ids = []
    for amount in range(5):
        status, sub = await any_api.call(
            "POST", "/v1/tasks", body={"agent": "approve", "input": {"amount": amount}}
        )
        assert status == 201
        ids.append(sub["id"])
    for task_id in ids:
        await _waiting(any_api, task_id)
    seen: list[int] = []
    path = "/v1/waiting?limit=2"
    while True:
        status, page = await any_api.call("GET", path)
        assert status == 200, page
        seen += [t["id"] for t in page["tasks"]]
        if page["next"] is None:
            break
        path = f"/v1/waiting?limit=2&cursor={page['next']}"
    assert seen == sorted(ids, reverse=True)
    _, whole = await any_api.call("GET", "/v1/waiting?limit=5")  # (no empty page after)
    assert len(whole["tasks"]) == 5 and whole["next"] is None
    bad = await any_api.call("GET", "/v1/waiting?cursor=x")
    assert bad[0] == 422
    for task_id in ids:
        await any_api.call("POST", f"/v1/tasks/{task_id}:cancel")
