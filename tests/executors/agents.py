"""Agents for the executor tests, at module level so that child processes and Ray
workers can import them. They run on whatever executor the runtime is given."""

from __future__ import annotations

import asyncio
import ctypes
import os
import sys
import threading
import uuid
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel

import legion


class Question(BaseModel):
    text: str


class Unpicklable(legion.Permanent):
    """Pickles, but cannot be unpickled (a required keyword-only argument)."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code


def _node() -> str:
    """The Ray node this runs on ("" outside Ray)."""
    if "ray" not in sys.modules:
        return ""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def tell(fifo: str, line: str) -> None:
    """Write one line to the test waiting on ``fifo``."""
    with open(fifo, "w") as f:
        f.write(line + "\n")


@legion.agent(retries=0)
async def tally(ctx: legion.Context, word: str) -> Any:
    """Appends ``word`` to the session's list, atomically, and counts it."""
    await ctx.memory.update("count", lambda n: n + 1, default=0)
    return await ctx.memory.update("words", lambda words: [*words, word], default=[])


@legion.agent(retries=0)
async def echo(ctx: legion.Context, text: str) -> dict[str, Any]:
    """Uses every part of the context once."""
    twice = await ctx.gather(
        ctx.step("double", lambda: text * 2), ctx.step("double", str.upper, text)
    )
    await ctx.memory.set("text", {"value": text})
    remembered = await ctx.memory.get("text")
    missing = await ctx.memory.get("nothing", "default")
    await ctx.memory.delete("gone")
    ctx.log.warning("echoing %s", text)
    return {
        "pid": os.getpid(),
        "node": _node(),
        "twice": twice,
        "remembered": remembered,
        "missing": missing,
        "items": await ctx.memory.items(),
        "ids": [ctx.task_id, ctx.attempt, ctx.key, ctx.session, ctx.agent],
    }


class Locked:
    """What a parameter's validator made of its input: an object that does not pickle."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lock = threading.Lock()


@legion.agent(retries=2, backoff=0)
async def locked(ctx: legion.Context, text: Annotated[str, AfterValidator(Locked)]) -> str:
    made: Any = text  # (a Locked: what the validator answered)
    return str(made.text)


@legion.agent(retries=0)
async def says_why(ctx: legion.Context, n: int) -> None:
    """Logs why it fails, and fails at once."""
    ctx.log.error("task %d is about to fail", n)
    raise legion.Permanent(f"failed {n}")


@legion.agent(retries=1, backoff=0.01)
async def branches(ctx: legion.Context, n: int) -> list[str]:
    """Gathers coroutines of its own that each record two steps (keyed within their
    branch: ``fetch@0``), fails once after them, and replays them on its retry."""

    async def one(i: int) -> Any:
        page = await ctx.step("fetch", lambda: f"page {i} attempt {ctx.attempt}")
        return await ctx.step("post", str.upper, page)

    posted = await ctx.gather(*(one(i) for i in range(n)))
    if ctx.attempt == 1:
        raise ConnectionError("lost the connection after the branches")
    return list(posted)


@legion.agent(retries=1, backoff=0.01)
async def replaying(ctx: legion.Context, n: int) -> dict[str, Any]:
    """Records a step, fails once, and sees the step replayed on its retry."""
    token = await ctx.step("token", lambda: uuid.uuid4().hex)
    if ctx.attempt == 1:
        await ctx.memory.set("token", token)
        raise ConnectionError("lost the connection after the step")
    return {"token": token, "first": await ctx.memory.get("token"), "attempt": ctx.attempt}


@legion.agent(retries=2)
async def permanent(ctx: legion.Context, n: int) -> None:
    raise legion.Permanent(f"input {n} can never work")


@legion.agent(retries=0)
async def value_error(ctx: legion.Context, n: int) -> None:
    await ctx.step("fails", int, "not a number")


async def _effect(n: int) -> int:
    return n


@legion.agent(retries=2)
async def called_step(ctx: legion.Context, n: int) -> None:
    await ctx.step("called", _effect(n))  # type: ignore[arg-type]


@legion.agent(retries=2)
async def unpicklable(ctx: legion.Context, n: int) -> None:
    raise Unpicklable("custom failure", code=n)


@legion.agent(retries=0)
async def exits(ctx: legion.Context, code: int) -> None:
    sys.exit(code)


@legion.agent(retries=0)
async def hard_exit(ctx: legion.Context, code: int) -> None:
    os._exit(code)


@legion.agent(retries=0)
async def forks_a_copy(ctx: legion.Context, how: str) -> dict[str, Any]:
    """Forks a copy of its process that ends with ``sys.exit`` (not ``os._exit``) or
    returns, as agents' code does by mistake; waits for it."""
    pid = os.fork()
    if pid == 0:  # the copy
        if how == "exit":
            sys.exit(0)
        return {"from": "the copy"}
    os.waitpid(pid, 0)  # noqa: ASYNC222 - the copy ends at once
    return {"from": "the process", "pid": os.getpid()}


@legion.agent(retries=0)
async def segfault(ctx: legion.Context, n: int) -> None:
    ctypes.string_at(0)


@legion.agent(retries=0)
async def memory_bomb(ctx: legion.Context, chunk_mb: int) -> None:
    chunks = []
    while True:
        chunks.append(bytearray(chunk_mb * 2**20))


@legion.agent(retries=0, timeout=3)
async def spin_past_timeout(ctx: legion.Context, n: int) -> None:
    """Tells its pid, then loops without ever yielding, past its 3 s timeout."""
    await ctx.memory.set("pid", os.getpid())
    while True:
        pass


@legion.agent(retries=0, timeout=None)
async def spin(ctx: legion.Context, fifo: str) -> None:
    """Tells its pid on ``fifo``, then loops without ever yielding."""
    tell(fifo, str(os.getpid()))
    while True:
        pass


@legion.agent(retries=0)
async def takes_model(ctx: legion.Context, q: Question) -> str:
    return f"{type(q).__name__}: {q.text}"


@legion.agent(retries=0)
async def chat(ctx: legion.Context, question: str) -> list[str]:
    first = await ctx.llm.chat([{"role": "user", "content": question}])
    again = await ctx.llm.chat([{"role": "user", "content": question}], max_tokens=5)
    return [first.text, again.text, first.model]


@legion.agent(retries=0)
async def contract_batch(ctx: legion.Context, question: str) -> dict[str, Any]:
    """The same request at the standard tier, then at the batch tier (the task waits for
    the batch, and resumes)."""
    messages = [{"role": "user", "content": question}]
    standard = await ctx.llm.chat(messages, max_tokens=12)
    batched = await ctx.llm.chat(messages, max_tokens=12, tier="batch", deadline=60.0)
    return {"standard": standard.text, "batched": batched.text}


@legion.agent(retries=1, backoff=0.01)
async def outlives_its_node(ctx: legion.Context, fifo: str) -> dict[str, Any]:
    """Attempt 1 records a step, says where it runs, and waits to be lost with its node;
    attempt 2 returns where it ran and the step it got back."""
    token = await ctx.step("token", lambda: uuid.uuid4().hex)
    if ctx.attempt == 1:
        await ctx.memory.set("token", token)
        tell(fifo, _node())
        await asyncio.Event().wait()
    return {
        "node": _node(),
        "token": token,
        "first": await ctx.memory.get("token"),
        "attempt": ctx.attempt,
    }


@legion.agent(executor="process", retries=0)
async def declared(ctx: legion.Context, n: int) -> int:
    """Asks for the process executor itself."""
    return os.getpid()


@legion.agent(retries=1, backoff=0.01)
async def contract_replay(ctx: legion.Context, ledger: str) -> dict[str, Any]:
    """A step with a side effect (a line in ``ledger``), then a failure on the first
    attempt: the retry must replay the step, not run it again."""

    def side_effect() -> tuple[int, int]:
        with open(ledger, "a") as f:
            f.write("ran\n")
        return (1, 2)

    value = await ctx.step("effect", side_effect)
    if ctx.attempt == 1:
        await ctx.memory.set("first", value)
        raise ConnectionError("lost the connection after the step")
    return {"first": await ctx.memory.get("first"), "again": value}


@legion.agent(retries=0)
async def contract_json(ctx: legion.Context, n: int) -> dict[str, Any]:
    value = await ctx.step("pair", lambda: (1, 2))
    return {"value": value, "kind": type(value).__name__}


@legion.agent(retries=0)
async def contract_gather(ctx: legion.Context, n: int) -> dict[str, Any]:
    async def ok() -> int:
        return 1

    async def second() -> int:
        raise ValueError("second failed")

    async def boom() -> str:
        return "boom"

    try:
        await ctx.gather(ok(), second())
        error = None
    except ValueError as exc:
        error = str(exc)
    collected = await ctx.gather(ok(), boom(), return_exceptions=True)
    return {"error": error, "collected": collected}


@legion.agent(retries=0)
async def waits(ctx: legion.Context, n: int) -> Any:
    got = await ctx.wait_for("go")
    child = await ctx.spawn(doubled, {"i": n})
    return {"n": n, "got": got, "child": child}


@legion.agent(retries=0)
async def doubled(ctx: legion.Context, i: int) -> dict[str, int]:
    return {"i": 2 * i}


@legion.agent(resources={"widget": 1}, retries=0)
async def needs_a_widget(ctx: legion.Context, n: int) -> str:
    """Runs only where a widget is: says which node that was."""
    return _node()


@legion.agent(retries=2)
async def sdk_client(ctx: legion.Context, kind: str) -> str:
    client = ctx.llm.openai() if kind == "openai" else ctx.llm.anthropic()
    return type(client).__name__


@legion.agent(retries=2)
async def contract_bytes_step(ctx: legion.Context, n: int) -> None:
    await ctx.step("fine", lambda: n)
    await ctx.step("raw", lambda: b"bytes")


@legion.agent(retries=0)
async def gathered_chats(ctx: legion.Context, n: int) -> list[str]:
    """``n`` LLM calls at once, made (and recorded) by the worker for this child."""
    calls = (ctx.llm.chat([{"role": "user", "content": f"question {i}"}]) for i in range(n))
    return [reply.text for reply in await ctx.gather(*calls)]


@legion.agent(retries=0, timeout=60)
async def forks(ctx: legion.Context, pidfile: str, then_exit: bool) -> int:
    """Starts a process that outlives it (holding its pipe to the worker), writes its pid
    to ``pidfile``, and returns, or exits with code 3."""
    pid = os.fork()
    if pid == 0:  # the copy: a sleep, its standard input and output the child's pipe
        os.execv("/bin/sleep", ["sleep", "300"])
    _write(pidfile, str(pid))
    if then_exit:
        os._exit(3)
    return pid


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


@legion.agent(retries=0)
async def told_then_naps(ctx: legion.Context, fifo: str, n: int) -> int:
    """Tells ``n`` on ``fifo`` as it begins, then naps a moment."""
    tell(fifo, str(n))
    await asyncio.sleep(0.5)
    return n


@legion.agent(retries=0)
async def steps_on(ctx: legion.Context, fifo: str, ledger: str) -> int:
    """Records a step, says its pid, then takes a step after another until stopped: each
    step's side effect is a line of the ledger."""

    def note(what: str) -> str:
        with open(ledger, "a") as f:
            f.write(f"{what} {os.getpid()}\n")
        return what

    await ctx.step("first", note, "first")
    tell(fifo, str(os.getpid()))
    for n in range(1000):
        await asyncio.sleep(0.05)
        await ctx.step("next", note, f"next-{n}")
    return 0


@legion.agent(retries=0)
async def holds(ctx: legion.Context, fifo: str, gate: str) -> int:
    """Says it began, then holds its worker until the file ``gate`` exists."""
    tell(fifo, str(ctx.task_id))
    while not os.path.exists(gate):  # noqa: ASYNC110, ASYNC240 - a file the test makes
        await asyncio.sleep(0.02)
    return ctx.task_id


@legion.agent(retries=0)
async def chained(ctx: legion.Context, n: int) -> int:
    """Two steps, the second taking the first's result: dependent, as they must run."""

    async def slow(x: int) -> int:
        await asyncio.sleep(0.02)
        return x + 1

    first = await ctx.step("first", slow, n)
    return int(await ctx.step("second", slow, first))


@legion.agent(retries=0, timeout=None)
async def naps(ctx: legion.Context, seconds: float) -> None:
    await asyncio.sleep(seconds)
