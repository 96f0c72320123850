"""What one client may hold of a server, over real sockets: places among the requests in
progress while its bodies do not come, connections while its headers do not, memory with
headers; and the answers given at the socket are JSON."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from legion.server import protocol
from legion.server.keys import new_key
from tests.server.conftest import Api, StartApi

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connect(api: Api) -> Connection:
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


def _half_post(key: str) -> bytes:
    """A submission whose body never comes whole."""
    return (
        b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
        b'Content-Length: 100\r\n\r\n{"agent":' % key.encode()
    )


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], object]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if line)
    body = await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers, json.loads(body)


@asynccontextmanager
async def _half_posts(api: Api, n: int) -> AsyncIterator[list[Connection]]:
    """``n`` connections, each sending a submission whose body never comes whole."""
    held = [await _connect(api) for _ in range(n)]
    try:
        for _, writer in held:
            writer.write(_half_post(api.key))
            await writer.drain()
        yield held
    finally:
        for _, writer in held:
            writer.close()


async def _other_key(api: Api) -> dict[str, str]:
    key = new_key("other", time.time())
    await api.runtime.store.add_api_key(key.record)
    return api.auth(key.token)


async def test_one_key_whose_bodies_do_not_come_holds_at_most_half_the_places(
    start_api: StartApi, tmp_path: Path
) -> None:
    # 130 requests whose bodies never came held all 128 places for 30 s: every tenant
    # was answered 503, and the same again as soon as they were let go.
    api = await start_api(f"sqlite:///{tmp_path / 'half.db'}", max_in_progress=16)
    other = await _other_key(api)
    async with _half_posts(api, 8):
        reader, writer = await _connect(api)
        try:
            # Its ninth waits on its own bodies: refused, the others' places kept.
            writer.write(_half_post(api.key))
            await writer.drain()
            status, headers, body = await _answer(reader)
            assert status == 503 and headers["retry-after"] == "1"
            assert "hold 8 places, its share" in str(body)  # (not "the server is saturated")
        finally:
            writer.close()
        for _ in range(8):  # another key is served, again and again
            status, _ = await api.call("GET", "/v1/key", headers=other)
            assert status == 200


async def test_while_every_place_is_taken_a_stalled_body_gives_its_place_up(
    start_api: StartApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(protocol, "STALLED", 0.0)  # (any body not whole counts stalled)
    api = await start_api(f"sqlite:///{tmp_path / 'stalled.db'}", max_in_progress=8)
    other = await _other_key(api)
    async with _half_posts(api, 8) as held:
        statuses: list[int] = []
        while not statuses or statuses[-1] != 200:  # each try a real request
            status, _ = await api.call("GET", "/v1/key", headers=other)
            statuses.append(status)
        assert set(statuses[:-1]) <= {503}
        for reader, _ in held:
            status, headers, body = await _answer(reader)
            assert status == 408 and headers["connection"] == "close"
            assert "body did not arrive" in str(body)
    status, _ = await api.call("POST", "/v1/tasks", body={"agent": "work", "input": {"n": 1}})
    assert status == 201


async def test_headers_past_their_limit_are_refused_431_before_they_are_read_whole(
    start_api: StartApi, tmp_path: Path
) -> None:
    # A 50 MB header was read whole before the 401, and eight such clients took 860 MB.
    api = await start_api(f"sqlite:///{tmp_path / 'head.db'}")
    reader, writer = await _connect(api)
    reading = asyncio.create_task(_answer(reader))
    try:
        writer.write(b"GET /v1/key HTTP/1.1\r\nHost: x\r\nX-Big: ")
        for _ in range(64):  # 4 MiB at most, sent until the server answers
            if reading.done():
                break
            try:
                writer.write(b"a" * 65536)
                await writer.drain()
            except ConnectionError:
                break
        status, headers, body = await reading
    finally:
        writer.close()
    assert status == 431 and headers["content-type"] == "application/json"
    assert "larger than 65536 bytes" in str(body)
    assert (await api.call("GET", "/v1/key"))[0] == 200


async def test_a_malformed_request_is_answered_json(start_api: StartApi, tmp_path: Path) -> None:
    api = await start_api(f"sqlite:///{tmp_path / 'bad.db'}")
    for sent in (
        b"GARBAGE\r\n\r\n",
        b"GET /v1/key HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET v1/key HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        reader, writer = await _connect(api)
        try:
            writer.write(sent)
            await writer.drain()
            status, headers, body = await _answer(reader)
        finally:
            writer.close()
        assert status == 400 and headers["content-type"] == "application/json", sent
        assert body == {"detail": "invalid HTTP request"}


async def test_past_the_connections_it_takes_the_server_closes_those_idle_longest(
    start_api: StartApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 20,500 connections sending half a request each took every file the process could
    # open: no one was answered, and asyncio logged a traceback per accept.
    monkeypatch.setattr(protocol, "most_connections", lambda: 4)
    api = await start_api(f"sqlite:///{tmp_path / 'conns.db'}")
    idle = [await _connect(api) for _ in range(4)]
    try:
        for _, writer in idle:
            writer.write(b"GET /v1/key HTTP/1.1\r\n")  # and nothing more
            await writer.drain()
        # Not idle for long enough yet: the new connection is the one closed.
        reader, writer = await _connect(api)
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
        monkeypatch.setattr(protocol, "STALLED", 0.0)
        status, _ = await api.call("GET", "/v1/key")  # the oldest idle one gave way
        assert status == 200
        status, _, body = await _answer(idle[0][0])
        assert status == 408 and "headers did not arrive" in str(body)
    finally:
        for _, writer in idle:
            writer.close()


async def test_the_metrics_port_times_out_headers_that_do_not_come(
    start_api: StartApi, tmp_path: Path
) -> None:
    # Plain uvicorn served it: 200 connections sending half a request were all still
    # open two minutes later.
    api = await start_api(f"sqlite:///{tmp_path / 'm.db'}", metrics_port=0, body_seconds=0.5)
    assert api.server.metrics_url is not None
    host, port = api.server.metrics_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        status, _, _ = await _answer(reader)
    finally:
        writer.close()
    assert status == 408
