"""What `import legion` and the `legion` command load at start.

Every `legion ...` command, `--help` included, imports `legion.cli.app` first, and the
test suite starts the command as a subprocess hundreds of times: each module loaded at
start is paid on every one of them. The heavy parts (pydantic, aiohttp, rich, the provider
simulator, the LLM layer, the executors, bench and demo code, the server, the SQLite
store, the store's side of a frozen worker) are imported inside the functions that use
them; these tests keep them out of the start without timing it. Each import runs in a
fresh interpreter, as the command does. (`test_public_api` keeps the CLI's own packages,
typer and rich, out of `legion`.)
"""

from __future__ import annotations

import subprocess
import sys

import pytest

# Never loaded by `import legion` or by the CLI's start.
NOT_AT_START = (
    "aiohttp",
    "pydantic",
    "rich",
    "legion.sim",
    "legion.llm",
    "legion.executors",
    "legion.bench",
    "legion.demo",
    "legion.server",
    "legion.gateway",
    "legion.vectors",
    "legion.store.sqlite",
    "legion.store.freeze",
)


def _loaded_after(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(out.stdout.split())


@pytest.mark.parametrize("module", ["legion", "legion.cli.app"])
def test_heavy_modules_are_not_loaded_at_start(module: str) -> None:
    loaded = _loaded_after(module)
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(h + ".") for h in NOT_AT_START))
    assert heavy == [], f"import {module} loads {heavy}"


def test_the_heavy_modules_are_still_importable() -> None:
    # A name in NOT_AT_START that no longer exists would make the test above pass for
    # nothing.
    loaded = _loaded_after("legion.llm, legion.sim, legion.executors, legion.bench")
    assert {"aiohttp", "legion.llm", "legion.sim", "legion.executors"} <= loaded
    assert "legion.store.sqlite" in _loaded_after("legion; legion.SQLiteStore")


def test_an_http_route_loads_its_http_stack_when_built_not_in_its_first_call() -> None:
    # aiohttp loaded in the first call, ~0.2 s inside that call's agent: the watchdog
    # reported "agent `ask` blocked the event loop" on the first task of every run.
    code = (
        "import asyncio, os, sys\n"
        "os.environ['OPENAI_API_KEY'] = 'k'\n"
        "from legion.llm import open_client\n"
        "async def main():\n"
        "    client = await open_client('openai:m@http://127.0.0.1:9/v1')\n"
        "    print('aiohttp' in sys.modules)\n"
        "    await client.aclose()\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
