"""CPU cost per LLM call of the HTTP client options for OpenAI-compatible servers.

Starts the provider simulator in a subprocess (so its CPU is not counted), then
for each client option sends ``--calls`` chat completions with ``--concurrency``
of them in flight at once and prints the client process's CPU time per call
(``time.process_time``, all threads) and the wall time.

Options measured:

* ``sdk-httpx``: the official ``openai`` SDK with its default transport.
* ``sdk-aiohttp``: the SDK on its aiohttp transport (``DefaultAioHttpClient``).
* ``aiohttp-raw``: one bare ``aiohttp`` session posting JSON, parsing with orjson.
* ``legion``: legion's ``OpenAIProvider`` (aiohttp underneath), as used by ``ctx.llm``.

Run: ``python benchmarks/provider_client_cost.py --calls 5000 --concurrency 1000``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import orjson

from legion.llm import ChatRequest, OpenAIProvider

MODEL = "sim-model"
Call = Callable[[int], Awaitable[None]]


def _messages(i: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Say something about item {i}."}]


async def _sdk(
    base_url: str, aiohttp_transport: bool
) -> tuple[Call, Callable[[], Awaitable[None]]]:
    http_client = openai.DefaultAioHttpClient() if aiohttp_transport else None
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="x", max_retries=0, timeout=60.0, http_client=http_client
    )

    async def call(i: int) -> None:
        reply = await client.chat.completions.create(model=MODEL, messages=_messages(i))  # type: ignore[arg-type]
        assert reply.choices[0].message.content

    return call, client.close


async def _raw(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        headers={"Authorization": "Bearer x", "Content-Type": "application/json"},
    )
    url = f"{base_url}/chat/completions"

    async def call(i: int) -> None:
        body = orjson.dumps({"model": MODEL, "messages": _messages(i)})
        async with session.post(url, data=body) as response:
            reply = orjson.loads(await response.read())
        assert response.status == 200 and reply["choices"][0]["message"]["content"]

    return call, session.close


async def _legion(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    provider = OpenAIProvider(base_url=base_url, api_key="x", max_connections=0)

    async def call(i: int) -> None:
        result = await provider.chat(
            ChatRequest(model=MODEL, messages=tuple(_messages(i))), timeout=60.0
        )
        assert result.response.text

    return call, provider.aclose


OPTIONS = {
    "sdk-httpx": lambda url: _sdk(url, aiohttp_transport=False),
    "sdk-aiohttp": lambda url: _sdk(url, aiohttp_transport=True),
    "aiohttp-raw": _raw,
    "legion": _legion,
}


async def _measure(name: str, base_url: str, calls: int, concurrency: int) -> tuple[float, float]:
    call, close = await OPTIONS[name](base_url)
    try:
        for i in range(min(concurrency, 50)):  # warm up: connections, imports, caches
            await call(i)
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                await call(i)

        gc.collect()
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return (time.process_time() - cpu) / calls * 1000, time.perf_counter() - wall
    finally:
        await close()


async def _main(args: argparse.Namespace) -> None:
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "legion.sim", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), 30)).decode()
        match = re.search(r"(http://\S+/v1)$", line.strip())
        if match is None:
            raise SystemExit(f"simulator did not start: {line!r}")
        print(f"{args.calls} calls, {args.concurrency} concurrent, simulator {match[1]}")
        print(f"{'option':<12} {'CPU ms/call':>12} {'wall s':>8}")
        for name in args.options:
            cpu_ms, wall = await _measure(name, match[1], args.calls, args.concurrency)
            print(f"{name:<12} {cpu_ms:>12.3f} {wall:>8.2f}", flush=True)
    finally:
        server.terminate()
        await server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--options", nargs="+", choices=list(OPTIONS), default=list(OPTIONS))
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
