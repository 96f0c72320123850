"""Pitfall reports only for code the agent owns: the shipped example and the demo run
clean, legion's own work is never pinned on an agent, and a dependent pair of steps is
never called independent."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

import legion
from legion import Runtime
from legion.demo import questions_for
from legion.demo.agent import _index
from legion.demo.compare import DemoConfig, run_scaled
from legion.diagnostics.advisor import StepTrace, advise, fingerprints
from legion.diagnostics.report import Site, agent_files, blocked_loop, in_callback, user_site
from legion.diagnostics.watchdog import Block
from legion.loader import load_module
from legion.store import store_from_url

ROOT = Path(__file__).resolve().parents[2]
LEGION = Path(legion.__file__).parent
STDLIB = Path(json.__file__).parent.parent
PACKAGES = Path(pytest.__file__).parent.parent
USER = Path(__file__)

LOOP_CALLBACK = Site(str(STDLIB / "asyncio" / "events.py"), 84, "_run")
LOOP = [
    LOOP_CALLBACK,
    Site(str(STDLIB / "asyncio" / "base_events.py"), 1922, "_run_once"),
    Site(str(STDLIB / "asyncio" / "runners.py"), 118, "run"),
]
ENTRY = [
    Site(str(PACKAGES / "typer" / "main.py"), 1445, "wrapper", "return callback(**use_params)"),
    Site("/venv/bin/legion", 8, "<module>", "sys.exit(main())"),
]


def block(*inner: Site) -> Block:
    stack = (*inner, *LOOP, *ENTRY)
    return Block(0.3, None, user_site(stack), stack)


def test_a_block_with_no_frame_of_the_agents_code_is_worker_lag() -> None:
    legion_only = block(
        Site(str(LEGION / "journal.py"), 120, "flush"),
        Site(str(LEGION / "run" / "runner.py"), 90, "run_instance"),
    )
    libraries = block(
        Site(str(PACKAGES / "aiohttp" / "client.py"), 700, "_request"),
        Site(str(PACKAGES / "pydantic" / "main.py"), 200, "model_validate"),
        Site(str(STDLIB / "json" / "decoder.py"), 337, "decode"),
        Site(str(LEGION / "llm" / "openai.py"), 150, "chat"),
    )
    for lag in (legion_only, libraries):
        assert user_site(lag.stack) is None
        assert blocked_loop("research", lag) is None
    # Beyond the loop's callback lie the loop and the program that runs it: never blamed.
    assert in_callback(libraries.stack)[-1].function == "chat"


def test_the_sdk_import_of_a_first_ctx_llm_openai_is_not_the_agents_block() -> None:
    # The README's one client line (`client = ctx.llm.openai()`) was reported as the
    # agent blocking the loop: its first use in a process imports the SDK.
    mine = Site(str(USER), 5, "ask", "client = ctx.llm.openai()")
    importing = (
        Site(str(PACKAGES / "openai" / "_client.py"), 40, "<module>"),
        Site(str(STDLIB / "importlib" / "__init__.py"), 126, "import_module"),
        Site(str(LEGION / "llm" / "sdk" / "clients.py"), 12, "<module>"),
        Site(str(LEGION / "llm" / "calls.py"), 167, "openai"),
    )
    assert blocked_loop("ask", block(*importing, mine)) is None
    # The agent's own import, on its own line, is still its own.
    own = (Site(str(PACKAGES / "pandas" / "__init__.py"), 1, "<module>"), mine)
    assert blocked_loop("ask", block(*own)) is not None


def test_an_import_legions_own_code_makes_on_first_use_is_not_the_agents_block() -> None:
    # `col.add(...)` on a PostgreSQL store imported legion.vectors.postgres: "import it at
    # the top of the agent's module", of a module the agent never imports.
    mine = Site(str(USER), 5, "note", "await col.add(text)")
    importing = (
        Site(str(LEGION / "vectors" / "postgres.py"), 1, "<module>"),
        Site(
            "<frozen importlib._bootstrap>", 1, "_find_and_load", "import legion.vectors.postgres"
        ),
        Site(str(LEGION / "vectors" / "backend.py"), 40, "vectors_for"),
        Site(str(LEGION / "vectors" / "collection.py"), 90, "add"),
    )
    assert blocked_loop("note", block(*importing, mine)) is None
    # A library's import made by the agent's own call is still its own.
    theirs = (
        Site("<frozen importlib._bootstrap>", 1, "_find_and_load", "import numpy"),
        Site(str(PACKAGES / "langgraph" / "pregel" / "main.py"), 300, "ainvoke"),
    )
    assert blocked_loop("note", block(*theirs, mine)) is not None


def test_a_captured_stack_names_the_module_an_import_loads(tmp_path: Path) -> None:
    # The watchdog reads the stack of the loop's thread; an import's frozen frames have
    # no line to show, so the module they load is kept in its place.
    (tmp_path / "first_use_probe_mod.py").write_text(
        "import sys\nfrom legion.diagnostics.watchdog import _stack\n"
        "STACK = _stack(sys._getframe())\n"
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import first_use_probe_mod  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("first_use_probe_mod", None)
    loading = [s.code for s in first_use_probe_mod.STACK if s.function == "_find_and_load"]
    assert loading == ["import first_use_probe_mod"]


def test_an_import_on_first_use_is_told_to_move_to_the_top_not_to_a_thread() -> None:
    # A framework's first call (or the agent's own import inside it) imports modules:
    # "use an async call or asyncio.to_thread" was the wrong cure.
    mine = Site(str(USER), 55, "calculate", "state = await graph.ainvoke(...)")
    importing = (
        Site("<frozen importlib._bootstrap_external>", 1, "exec_module"),
        Site("<frozen importlib._bootstrap>", 1, "_find_and_load", "import numpy.linalg"),
        Site(str(PACKAGES / "numpy" / "__init__.py"), 30, "<module>"),
        Site("<frozen importlib._bootstrap>", 1, "_find_and_load", "import numpy"),
        Site(str(PACKAGES / "langgraph" / "pregel" / "main.py"), 300, "ainvoke"),
    )
    found = blocked_loop("calculate", block(*importing, mine))
    # (the module the call imported is named: the outermost import, not what it imports)
    assert found is not None and "importing `numpy` on first use" in found.message
    assert "import it at the top of the agent's module" in found.message
    assert "to_thread" not in found.message
    plain = blocked_loop("calculate", block(Site(str(STDLIB / "time.py"), 1, "sleep"), mine))
    assert plain is not None and "to_thread" in plain.message


def test_python_computing_is_told_to_run_in_a_process_not_a_thread() -> None:
    # "use an async call or asyncio.to_thread" for a loop of the agent's own: 4 CPU-bound
    # tasks took as long with to_thread (one thread at a time runs Python), 1.4-1.7x less
    # with the process executor, which the advice never named.
    mine = Site(str(USER), 20, "crunch", "total += i * i")
    stack = (mine, *LOOP)
    computing = blocked_loop("crunch", Block(0.4, None, mine, stack, busy=True))
    assert computing is not None and 'executor="process"' in computing.message
    assert "--executor process" in computing.message and "to_thread" not in computing.message
    asleep = blocked_loop("crunch", Block(0.4, None, mine, stack))
    assert asleep is not None and "to_thread" in asleep.message
    # A library's call (numpy, a driver) may free the interpreter in C: a thread helps.
    library = Site(str(PACKAGES / "numpy" / "linalg.py"), 10, "solve")
    in_c = blocked_loop("crunch", Block(0.4, None, mine, (library, *stack), busy=True))
    assert in_c is not None and "to_thread" in in_c.message


def test_a_line_computing_is_not_blamed_on_the_first_call_it_makes() -> None:
    # A busy loop `while time.monotonic() < end: pass` was reported "(time.monotonic)":
    # the call its condition makes, not what held the loop.
    spin = Site(str(USER), 7, "spin", "while time.monotonic() < end:")
    stack = (spin, *LOOP)
    computing = blocked_loop("spin", Block(0.4, None, spin, stack, busy=True))
    assert computing is not None and "(time.monotonic)" not in computing.message
    asleep = Site(str(USER), 7, "nap", "time.sleep(0.4)")
    slept = blocked_loop("nap", Block(0.4, None, asleep, (asleep, *LOOP)))
    assert slept is not None and "(time.sleep)" in slept.message


def test_a_loop_late_with_no_one_call_holding_it_is_not_blocked_by_the_agent() -> None:
    mine = Site(str(USER), 10, "search", "rows = index.execute(query)")
    stack = (mine, *LOOP)
    assert blocked_loop("research", Block(0.19, None, mine, stack, held=False)) is None
    assert blocked_loop("research", Block(0.19, None, mine, stack)) is not None


def test_a_block_in_the_agents_code_names_its_line() -> None:
    mine = Site(str(USER), 10, "fetch_sync", "time.sleep(0.3)")
    found = blocked_loop(
        "research",
        block(
            Site(str(PACKAGES / "requests" / "api.py"), 73, "get"),
            mine,
            Site(str(LEGION / "context.py"), 230, "record"),
        ),
    )
    assert found is not None and found.site == mine
    assert "blocked the event loop for 300 ms" in found.message and "(time.sleep)" in found.message


def test_an_agent_installed_as_a_package_owns_its_own_file() -> None:
    from legion.demo.agent import research

    (own,) = agent_files(research.fn)
    inside = Site(own, 50, "_index", "db.executemany(...)")
    lag = block(inside, Site(str(LEGION / "context.py"), 230, "record"))
    assert blocked_loop("research", lag) is None  # a file of legion's, as far as anyone knows
    found = blocked_loop("research", lag, agent_files(research.fn))
    assert found is not None and found.site == inside


def trace(key: str, start: float, end: float, inputs: tuple[object, ...], output: object, *,
          gathered: bool = False) -> StepTrace:  # fmt: skip
    return StepTrace(key, None, start, end, fingerprints(inputs), fingerprints((output,)), gathered)


def test_a_result_passed_on_in_another_form_is_a_dependency() -> None:
    short = {"text": "Yes.", "finish_reason": "stop", "usage": {"completion_tokens": 2}}
    prompt = [{"role": "user", "content": "Combine into one answer:\n- Yes.\n- No."}]
    assert (
        advise("a", [trace("llm-1", 0, 1, ([],), short), trace("llm-2", 1, 2, (prompt,), "")]) == []
    )
    count = trace("count", 0, 1, ("q",), 3)
    uses = trace("show", 1, 2, ("found 3 hits",), "ok")
    assert advise("a", [count, uses]) == []


def test_steps_inside_a_gather_are_never_advised() -> None:
    read = trace("read-2", 0, 1, ("hit",), {"summary": "a passage"}, gathered=True)
    call = trace("llm", 1, 2, ("an unrelated prompt",), {"text": "an answer"}, gathered=True)
    assert advise("a", [read, call]) == []
    first = trace("search", 0, 1, ("q",), "a")
    second = trace("lookup", 1, 2, ("b",), "b")
    (found,) = advise("a", [first, second])
    assert "`search` and `lookup`" in found.message


async def test_the_shipped_example_runs_clean(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    module = load_module(str(ROOT / "examples" / "research.py"))
    agent = module.research
    # The example's search builds its index on its first call (a few tens of ms): done
    # here first, as `legion demo` does, so that this test is about legion's reports.
    search = getattr(module, "search", None)
    if search is not None:
        search("with statement")
    lines = (ROOT / "examples" / "questions.jsonl").read_text().splitlines()
    inputs = [json.loads(line) for line in lines if line.strip()]
    caplog.set_level(logging.WARNING, logger="legion")
    # (The lag mark out of reach: a machine busy with other work can stall the loop, and
    # the worker would rightly say so; this test is about the reports on the agent.)
    url = f"sqlite:///{tmp_path / 'example.db'}"
    async with Runtime(url, llm="sim", max_loop_lag=3600) as rt:
        results = [r async for r in rt.map(agent, inputs)]
        stored = await rt.store.diagnostics(limit=1000)
    assert [r.status for r in results] == ["succeeded"] * len(inputs)
    assert [d for r in results for d in r.diagnostics] == []
    assert stored == []
    assert [r.getMessage() for r in caplog.records] == []


def only_database(folder: Path) -> Path:
    (db,) = folder.glob("scaled-*.db")
    return db


async def test_the_demo_runs_clean(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = DemoConfig(tasks=40)
    _index()  # as `legion demo` does before its runs
    caplog.set_level(logging.WARNING, logger="legion")
    report = await run_scaled(cfg, questions_for(cfg.tasks), tmp_path)
    assert report.succeeded == 40
    store = store_from_url(f"sqlite:///{only_database(tmp_path)}")
    await store.open()
    try:
        assert await store.diagnostics(limit=1000) == []
    finally:
        await store.aclose()
    assert [r.getMessage() for r in caplog.records] == []


async def test_a_call_that_waited_on_an_open_breaker_leaves_no_task_of_the_agents(
    db_url: str,
) -> None:
    """The breaker's wait runs on tasks of the client's own: made with the loop's task
    factory, they were counted as tasks the agent created and left running (an error
    right after the wait ended the call before their cancellation had)."""
    from legion.errors import ProviderUnavailable
    from legion.llm.breaker import Breaker, BreakerSettings
    from legion.llm.capacity import Capacity
    from legion.llm.client import LLMClient, Route
    from legion.retry import RetryPolicy
    from legion.testing import ScriptedProvider

    down = ScriptedProvider([ProviderUnavailable("503", provider="t") for _ in range(50)])
    breaker = Breaker(BreakerSettings(failures=1, open_for=0.01, probe_interval=0.01))
    route = Route("down", down, "m", Capacity("down"), breaker=breaker)
    llm = LLMClient([route], retry=RetryPolicy(retries=3, backoff=0), max_outage=0.3)

    @legion.agent(retries=0)
    async def careful(ctx: legion.Context, n: int) -> str:
        try:
            await ctx.llm.chat([{"role": "user", "content": "hi"}])
        except ProviderUnavailable as exc:
            return type(exc).__name__
        return "answered"

    async with Runtime(db_url, llm=llm) as rt:
        results = [r async for r in rt.map(careful, range(3))]
    assert [r.output for r in results] == ["ProviderUnavailable"] * 3
    assert [d.message for r in results for d in r.diagnostics] == []
