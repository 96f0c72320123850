"""``ctx.llm.openai()`` and ``ctx.llm.anthropic()``: the official SDKs, their requests
made as recorded ``ctx.llm`` calls against the simulator."""

from __future__ import annotations

import importlib
import re
import sys
from typing import Any

import anthropic
import openai
import pytest

import legion
from legion import Runtime, TaskStatus
from legion.errors import (
    MissingExtra,
    ProviderAuthError,
    ProviderRejected,
    is_fatal,
    is_retryable,
)
from legion.llm import Capacity, Route, SimulatedProvider, open_client
from legion.llm.client import LLMClient
from legion.llm.types import ChatResponse, Usage
from legion.store import store_from_url
from legion.testing import ScriptedProvider


def simulated(client: LLMClient) -> SimulatedProvider:
    provider = client.routes["default"].provider
    assert isinstance(provider, SimulatedProvider)
    return provider


@legion.agent
async def ask_openai(ctx: legion.Context, question: str) -> dict[str, Any]:
    client = ctx.llm.openai()
    assert client.max_retries == 0
    plain = await client.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": question}], max_tokens=12
    )
    stream = await client.chat.completions.create(
        model="sim-model",
        messages=[{"role": "user", "content": question + " again"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts: list[str] = []
    usage = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert usage is not None
    vectors = await client.embeddings.create(model="sim-model", input=[question, "b"])
    raw = await client.chat.completions.with_raw_response.create(
        model="sim-model", messages=[{"role": "user", "content": question}], max_tokens=12
    )
    return {
        "plain": plain.choices[0].message.content,
        "plain_tokens": plain.usage.completion_tokens if plain.usage else None,
        "stream": "".join(parts),
        "stream_tokens": usage.completion_tokens,
        "dims": len(vectors.data[0].embedding),
        "raw": raw.http_response.content.decode(),
    }


@legion.agent
async def ask_anthropic(ctx: legion.Context, question: str) -> dict[str, Any]:
    client = ctx.llm.anthropic()
    message = await client.messages.create(
        model="sim-model",
        max_tokens=12,
        system="Be brief.",
        messages=[{"role": "user", "content": question}],
    )
    text: list[str] = []
    async with client.messages.stream(
        model="sim-model", max_tokens=12, messages=[{"role": "user", "content": question}]
    ) as stream:
        async for piece in stream.text_stream:
            text.append(piece)
        final = await stream.get_final_message()
    assert message.content[0].type == "text"
    return {
        "plain": message.content[0].text,
        "out": message.usage.output_tokens,
        "stream": "".join(text),
        "final": final.content[0].text if final.content[0].type == "text" else "",
    }


async def direct(client: LLMClient, question: str) -> str:
    return (await client.chat([{"role": "user", "content": question}], max_tokens=12)).text


async def test_the_openai_sdk_calls_are_recorded_steps_with_usage_and_cost(db_url: str) -> None:
    llm = await open_client("sim")
    try:
        sim = simulated(llm).simulator
        async with Runtime(db_url, llm=llm) as rt:
            (result,) = [r async for r in rt.map(ask_openai, ["why?"])]
        assert result.ok, result.error
        assert sim.stats().requests_total == 4  # chat, stream, embeddings, chat again
        value = result.output
        # The SDK parsed the simulator's completions as they were.
        assert value["plain"] == await direct(llm, "why?")
        assert value["stream"] == await direct(llm, "why? again")
        assert value["plain_tokens"] and value["stream_tokens"]
        assert value["dims"] > 0
        assert result.usage is not None and result.usage["llm_calls"] == 4
        assert result.usage["completion_tokens"] > 0
        store = store_from_url(db_url)
        await store.open()
        try:
            steps = await store.steps(result.id)
        finally:
            await store.aclose()
        assert sum(step.key.startswith("llm.default.") for step in steps) == 4
    finally:
        await llm.aclose()


SEEN: dict[int, dict[str, Any]] = {}


@legion.agent(retries=1, backoff=0)
async def ask_then_fail_once(ctx: legion.Context, question: str) -> str:
    SEEN[ctx.attempt] = await ask_openai.fn(ctx, question)
    if ctx.attempt == 1:
        raise RuntimeError("the first attempt fails after its calls")
    return "done"


async def test_a_retried_task_gets_the_recorded_bytes_back_and_buys_nothing(
    db_url: str,
) -> None:
    SEEN.clear()
    llm = await open_client("sim")
    try:
        sim = simulated(llm).simulator
        async with Runtime(db_url, llm=llm) as rt:
            (result,) = [r async for r in rt.map(ask_then_fail_once, ["same?"])]
        assert result.ok, result.error
        assert sorted(SEEN) == [1, 2]
        assert sim.stats().requests_total == 4  # the second attempt replayed all four
        assert SEEN[2] == SEEN[1]  # the raw body included, byte for byte
        assert SEEN[1]["raw"].startswith('{"id":"chatcmpl-')
    finally:
        await llm.aclose()


async def test_the_anthropic_sdk_speaks_to_any_route(db_url: str) -> None:
    llm = await open_client("sim")
    try:
        sim = simulated(llm).simulator
        async with Runtime(db_url, llm=llm) as rt:
            (result,) = [r async for r in rt.map(ask_anthropic, ["how?"])]
        assert result.ok, result.error
        assert sim.stats().requests_total == 2
        value = result.output
        assert value["plain"] and value["stream"] == value["final"]
        assert value["out"] > 0
        assert result.usage is not None and result.usage["llm_calls"] == 2
    finally:
        await llm.aclose()


async def test_a_failure_legion_could_not_retry_is_the_sdk_s_own_error(db_url: str) -> None:
    @legion.agent(retries=0)
    async def bad(ctx: legion.Context, question: str) -> str:
        try:
            await ctx.llm.openai().chat.completions.create(
                model="sim-model", messages=[{"role": "user", "content": question}], n=3
            )
        except openai.BadRequestError as exc:
            return f"{exc.status_code}: {exc.message}"
        return "no error"

    async with Runtime(db_url, llm="sim") as rt:
        (result,) = [r async for r in rt.map(bad, ["x"])]
    assert result.output.startswith("400") and "n=1" in result.output
    assert issubclass(anthropic.BadRequestError, anthropic.APIStatusError)  # mapped alike


async def test_an_sdk_error_for_a_call_legion_could_not_make_is_retried_as_legions_would_be(
    db_url: str,
) -> None:
    # A request legion cannot take (n=3), a provider's refusal (400) and a rejected key:
    # the SDK raises its own error, and the task is not retried (the run stops for the
    # key), as the same failure of ctx.llm.chat is treated.
    @legion.agent(retries=3, backoff=0)
    async def sdk_call(ctx: legion.Context, n: int) -> str:
        r = await ctx.llm.openai().chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], n=n
        )
        return str(r.choices[0].message.content)

    refused = ProviderRejected("no such model", provider="scripted", status=404)
    provider = ScriptedProvider([refused, "fine"])
    llm = LLMClient([Route("default", provider, "m", Capacity("default"))])
    async with Runtime(db_url, llm=llm) as rt:
        results = [await rt.result((await rt.submit(sdk_call, n)).id) for n in (3, 1, 1)]
    (wire, rejected, ok) = results
    assert (wire.status, wire.attempt) == (TaskStatus.FAILED, 1), wire
    assert wire.error is not None and wire.error.type == "BadRequestError"
    assert (rejected.status, rejected.attempt) == (TaskStatus.FAILED, 1), rejected
    assert rejected.error is not None and rejected.error.type == "NotFoundError"
    assert ok.status is TaskStatus.SUCCEEDED and ok.output == "fine"
    assert len(provider.requests) == 2  # nothing sent twice

    bad_key = ProviderAuthError("bad key", provider="scripted", status=401)
    keyless = LLMClient([Route("default", ScriptedProvider([bad_key]), "m", Capacity("x"))])
    async with Runtime(db_url, llm=keyless) as rt:
        task = await rt.submit(sdk_call, 1)
        with pytest.raises(legion.WorkerStopped):
            await rt.result(task.id)
        assert rt.fatal_error is not None  # the run stops: every task would meet it
        stopped = await rt.store.get(task.id)
    # ... and the task is not charged for it: back to the queue, its attempt unspent.
    assert stopped is not None and stopped.status is TaskStatus.QUEUED, stopped
    assert stopped.attempt == 0
    assert stopped.error is not None and stopped.error.type == "AuthenticationError"


async def test_what_an_sdk_asks_for_is_passed_on_or_refused_never_dropped(db_url: str) -> None:
    # A model's refusal came back as an empty answer; logprobs were asked of the provider
    # and thrown away; Anthropic's extended thinking was dropped from the request.
    @legion.agent(retries=0)
    async def sdk(ctx: legion.Context, question: str) -> dict[str, Any]:
        client = ctx.llm.openai()
        messages: Any = [{"role": "user", "content": question}]
        plain = await client.chat.completions.create(model="m", messages=messages, timeout=3)
        stream = await client.with_options(timeout=2).chat.completions.create(
            model="m", messages=messages, stream=True
        )
        streamed = [c.choices[0].delta.refusal async for c in stream if c.choices]
        refused = {}
        try:
            await client.chat.completions.create(model="m", messages=messages, logprobs=True)
        except openai.BadRequestError as exc:
            refused["logprobs"] = exc.message
        try:
            await ctx.llm.anthropic().messages.create(
                model="m",
                max_tokens=2048,
                messages=messages,
                thinking={"type": "enabled", "budget_tokens": 1024},
            )
        except anthropic.BadRequestError as exc:
            refused["thinking"] = exc.message
        message = plain.choices[0].message
        return {
            "content": message.content,
            "refusal": message.refusal,
            "streamed": [r for r in streamed if r],
            "refused": refused,
        }

    no = ChatResponse("", (), "stop", Usage(1, 1), "m", "scripted", refusal="I can't help.")
    provider = ScriptedProvider([no, no])
    llm = LLMClient([Route("default", provider, "m", Capacity("default"), timeout=60)])
    async with Runtime(db_url, llm=llm) as rt:
        (result,) = [r async for r in rt.map(sdk, ["where?"])]
    assert result.ok, result.error
    out = result.output
    assert (out["content"], out["refusal"], out["streamed"]) == (
        None,
        "I can't help.",
        ["I can't help."],
    )
    # The route's timeout, not the SDK's: a shorter one, timing attempts out, made the
    # route count as failing, and every call on it waited minutes.
    assert provider.timeouts == [60.0, 60.0]
    assert "logprobs" in out["refused"]["logprobs"]
    assert "'thinking'" in out["refused"]["thinking"]
    assert len(provider.requests) == 2  # neither refused call reached the provider


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_missing_sdk_is_named_with_its_extra_and_stops_the_run(
    sdk: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the SDK (nor ``httpx2``, which comes with it), ``ctx.llm.openai()`` failed
    with ``No module named 'httpx2'``, an error retried as if it were transient."""
    for name in (sdk, "httpx2"):
        monkeypatch.setitem(sys.modules, name, None)  # as on a machine without the extra
    for name in ("legion.llm.sdk.clients", "legion.llm.sdk.transport"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    clients = importlib.import_module("legion.llm.sdk.clients")
    make = clients.openai_client if sdk == "openai" else clients.anthropic_client
    with pytest.raises(MissingExtra, match=rf"needs the {sdk} SDK: .*legion-runtime\[{sdk}\]") as e:
        make(None, None)
    assert not is_retryable(e.value) and is_fatal(e.value)


@pytest.mark.parametrize(
    ("sdk", "least"), [("openai", "openai>=3.0"), ("anthropic", "anthropic>=1.0")]
)
def test_an_sdk_too_old_for_httpx2_is_named_with_the_version_needed(
    sdk: str, least: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # openai 2.x (within the extras' old bound, openai>=1.40) has no httpx2: every task
    # retried to dead on "No module named 'httpx2'".
    monkeypatch.setitem(sys.modules, "httpx2", None)
    for name in ("legion.llm.sdk.clients", "legion.llm.sdk.transport"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    clients = importlib.import_module("legion.llm.sdk.clients")
    with pytest.raises(MissingExtra, match=rf"needs {re.escape(least)} .*\[{sdk}\]") as e:
        clients._http_client(None, None, sdk, None)
    assert not is_retryable(e.value) and is_fatal(e.value)
