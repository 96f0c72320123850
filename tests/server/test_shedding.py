"""Load shedding over real HTTP: a bounded load past the bound on requests in progress is
answered 503 with ``Retry-After`` as soon as its headers are read, what is acknowledged is
in the store, and a refused connection stays usable (or closes, when the client asked)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import HTTPException, Request

from legion.server import protocol
from legion.server.body import json_body
from legion.store.types import TaskQuery
from tests.server.conftest import Api, StartApi


@asynccontextmanager
async def held(api: Api) -> AsyncIterator[asyncio.Task[Any]]:
    """One submission in progress, its body held until the block exits; yields once the
    server refuses the next request (the held one is then counted)."""
    release = asyncio.Event()
    sent = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"agent": "work", '
        sent.set()
        await release.wait()
        yield b'"input": {"n": -1}, "key": "held"}'

    holding = asyncio.create_task(
        api.http.post(api.url + "/v1/tasks", data=slow_body(), headers=api.auth())
    )
    await sent.wait()
    while True:  # each try is a real request, not a sleep
        async with api.http.get(api.url + "/v1/tasks", headers=api.auth()) as resp:
            await resp.read()
            if resp.status == 503:
                break
    try:
        yield holding
    finally:
        release.set()


async def load(api: Api, keys: list[str], concurrency: int) -> list[tuple[str, int, Any, Any]]:
    """A bounded load generator: a submission per key, at most ``concurrency`` at once;
    answers each key's status, body and Retry-After."""
    slots = asyncio.Semaphore(concurrency)

    async def one(key: str) -> tuple[str, int, Any, Any]:
        async with (
            slots,
            api.http.post(
                api.url + "/v1/tasks",
                json={"agent": "work", "input": {"n": 1}, "key": key},
                headers=api.auth(),
            ) as resp,
        ):
            return key, resp.status, await resp.json(), resp.headers.get("Retry-After")

    return list(await asyncio.gather(*(one(k) for k in keys)))


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """A body held by `held` keeps its place however long the load takes (else, with every
    place taken, it gives its place up after `protocol.STALLED`)."""
    monkeypatch.setattr(protocol, "STALLED", 3600.0)


@pytest.mark.usefixtures("patient")
async def test_a_bounded_load_past_the_bound_is_shed_with_retry_after_and_none_is_lost(
    start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(f"sqlite:///{tmp_path / 'shed.db'}", max_in_progress=1)
    first = [f"first-{i}" for i in range(40)]
    async with held(api) as holding:
        # The one place is held: the whole load is shed, and nothing of it stored.
        answers = await load(api, first, concurrency=40)
    resp = await holding
    assert resp.status == 201
    held_id = (await resp.json())["id"]
    resp.release()
    assert [status for _, status, _, _ in answers] == [503] * 40
    for _, _, body, retry in answers:
        assert retry == "1" and "saturated" in body["detail"]
    assert [t.key for t in await api.runtime.store.list_tasks(TaskQuery())] == ["held"]
    # Then the refused load again, and more, twenty at once on one place: what is
    # refused is retried until acknowledged.
    second = [f"second-{i}" for i in range(60)]
    acked: dict[str, int] = {}
    pending = first + second
    while pending:
        answers = await load(api, pending, concurrency=20)
        assert {status for _, status, _, _ in answers} <= {201, 503}
        assert all(retry == "1" for _, status, _, retry in answers if status == 503)
        acked |= {key: body["id"] for key, status, body, _ in answers if status == 201}
        pending = [key for key, status, _, _ in answers if status == 503]
    # Every acknowledged task is in the store, once, and nothing else.
    stored = await api.runtime.store.list_tasks(TaskQuery(limit=500))
    assert sorted(t.id for t in stored) == sorted([*acked.values(), held_id])
    assert {t.key for t in stored} == {*first, *second, "held"}


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, dict[str, str], Any]:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.mark.usefixtures("patient")
async def test_a_refused_connection_stays_open_for_the_next_request(
    start_api: StartApi, tmp_path: Path
) -> None:
    api = await start_api(f"sqlite:///{tmp_path / 'conn.db'}", max_in_progress=1)
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    body = b'{"agent": "work", "input": {"n": 1}}'
    request = (
        b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b"Content-Length: %d\r\n%s\r\n%s"
    )
    async with held(api) as holding:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for _ in range(3):  # the same connection, refused each time, body and all
                status, headers, answer = await exchange(
                    reader, writer, request % (api.key.encode(), len(body), b"", body)
                )
                assert status == 503 and headers["retry-after"] == "1"
                assert "saturated" in answer["detail"] and "connection" not in headers
            status, headers, _ = await exchange(
                reader,
                writer,
                request % (api.key.encode(), len(body), b"Connection: close\r\n", body),
            )
            assert status == 503 and headers["connection"] == "close"
            assert await reader.read() == b""  # closed by the server, as asked
        finally:
            writer.close()
    resp = await holding
    assert resp.status == 201
    resp.release()
    assert [t.key for t in await api.runtime.store.list_tasks(TaskQuery())] == ["held"]


async def test_a_body_left_half_sent_is_answered_408_and_frees_its_place(
    start_api: StartApi, tmp_path: Path
) -> None:
    # It held its place among those in progress for good: with one place, every other
    # request was answered 503 for as long as the connection stayed open.
    api = await start_api(f"sqlite:///{tmp_path / 'slow.db'}", max_in_progress=1, body_seconds=0.5)
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            b'Content-Length: 60\r\n\r\n{"agent":' % api.key.encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.split(b"\r\n")[0].split()[1] == b"408", head
    finally:
        writer.close()
    status, key = await api.call("GET", "/v1/key")
    assert status == 200, key
    assert await api.runtime.store.list_tasks(TaskQuery()) == []


async def test_a_client_that_leaves_mid_body_is_a_400_not_a_server_error() -> None:
    # It was logged as two tracebacks of an internal error, per request: any key holder
    # could flood the log by opening and dropping connections.
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"agent":', "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    request = Request({"type": "http", "method": "POST", "headers": []}, receive)
    with pytest.raises(HTTPException) as raised:
        await json_body(request)
    assert raised.value.status_code == 400
    assert raised.value.detail == "the client left before its body arrived"


async def test_headers_left_half_sent_are_answered_408_and_the_connection_closed(
    start_api: StartApi, tmp_path: Path
) -> None:
    # Such connections were held open for good: a file descriptor each, without end.
    api = await start_api(f"sqlite:///{tmp_path / 'hdr.db'}", body_seconds=0.5)
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    for sent in (b"GET /v1/key HTTP/1.1\r\nHost: x\r\n", b""):  # part of them, or nothing
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(sent)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(), 30)  # (to the close)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
    status, _ = await api.call("GET", "/v1/key")  # whole requests are served as ever
    assert status == 200
