"""A gateway that stops (`legion gateway` on SIGTERM: its serving task cancelled) answers
the calls in flight while it goes on adding their usage up, so a second signal loses no
count; a request whose body stalls is cut, as one whose headers stall is."""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest

from legion.gateway import app
from legion.sim import SimConfig
from tests.gateway.conftest import cluster
from tests.gateway.test_recording import QUESTION, sdk


async def test_calls_answered_while_it_stops_are_counted_past_a_second_signal(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The usage loop was cancelled first: a second signal (or a SIGKILL) during the
    # drain lost every count since the first (7 calls answered, 2 counted).
    async with cluster(sqlite_url, rpm=60, config=SimConfig(latency=0.05)) as c:
        key = await c.key("stopping")
        running = c.gateways[0]
        client = sdk(running.url, key)
        answered = 0

        async def call() -> None:
            nonlocal answered
            await client.chat.completions.create(model="sim-model", messages=QUESTION)
            answered += 1

        calls = [asyncio.create_task(call()) for _ in range(6)]  # (paced: 1 a second)
        async with asyncio.timeout(60):
            while c.sim.stats().requests_total < 1:  # noqa: ASYNC110 - the simulator's count
                await asyncio.sleep(0.01)
            running.server.cancel()  # the first signal: it answers what is in flight
            while answered < 2:  # noqa: ASYNC110 - answers the callers count
                await asyncio.sleep(0.01)
            running.server.cancel()  # the second: it stops now
            with contextlib.suppress(asyncio.CancelledError):
                await running.server
        stopped_with = answered  # (what a process that exits then had answered)
        totals = await running.store.key_usage(key.split("_")[1])
        served = c.sim.stats().requests_total
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await client.close()
    assert "stopping: answering what 6 connection(s) asked" in caplog.text  # (6 calls)
    assert totals is not None, "nothing was counted"
    assert stopped_with <= totals.calls <= served, (stopped_with, totals, served)


async def test_a_request_whose_body_stalls_is_cut(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client with a valid key that stopped sending mid-body held its handler and its
    # socket for good (only headers and idle connections were timed).
    monkeypatch.setattr(app, "IDLE_SECONDS", 0.5)
    async with cluster(sqlite_url) as c:
        key = await c.key("stalls")
        host, port = c.gateways[0].gateway.address[:2]
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: 100\r\nAuthorization: Bearer " + key.encode() + b"\r\n\r\n"
            b'{"model": '
        )
        await writer.drain()
        async with asyncio.timeout(30):
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"Content-Length: (\d+)", head)
            assert length is not None, head
            body = await reader.readexactly(int(length[1]))
        writer.close()
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"Connection: close" in head
    assert b"did not come within 0.5 s" in body
