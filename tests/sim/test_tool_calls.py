"""``tool_calls=True``: the simulator calls the tools it is offered, in turn, and answers
a ``json_schema`` response format with JSON of that schema."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from legion.sim.tools import MAX_ITEMS, sample
from tests.sim.conftest import Connect, StartSimulator

MODEL = "sim-model"
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    },
    {"type": "function", "function": {"name": "clock", "parameters": {"type": "object"}}},
]


async def test_each_tool_is_called_once_then_text(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    client = connect(await start_simulator(tool_calls=True))
    messages: list[Any] = [{"role": "user", "content": "Plan my trip"}]
    called = []
    for _ in range(2):
        reply = await client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert call.type == "function"
        called.append(call.function.name)
        messages.append(choice.message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "ok"})
        if call.function.name == "weather":
            assert json.loads(call.function.arguments).keys() == {"city", "days"}
    assert called == ["weather", "clock"]
    final = await client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.content

    again = await client.chat.completions.create(
        model=MODEL, messages=messages[:1], tools=TOOLS, stream=True
    )
    chunks = [chunk async for chunk in again]
    arguments = "".join(
        call.function.arguments or ""
        for chunk in chunks
        for call in chunk.choices[0].delta.tool_calls or ()
        if call.function is not None
    )
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert json.loads(arguments) == json.loads(
        (await client.chat.completions.create(model=MODEL, messages=messages[:1], tools=TOOLS))
        .choices[0]
        .message.tool_calls[0]  # type: ignore[index, union-attr]
        .function.arguments
    )


async def test_a_json_schema_gets_json_of_the_schema(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    client = connect(await start_simulator(tool_calls=True))
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "tags": {"type": "array", "items": {"type": "string"}},
            "kind": {"enum": ["a", "b"]},
            "score": {"anyOf": [{"type": "null"}, {"type": "number"}]},
        },
        "required": ["tags", "kind", "score"],
    }
    reply = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tag this"}],
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}},
    )
    value = json.loads(reply.choices[0].message.content or "")
    assert value["kind"] == "a" and len(value["tags"]) == 1 and value["score"] == 1.5


async def test_off_by_default(start_simulator: StartSimulator, connect: Connect) -> None:
    client = connect(await start_simulator())
    reply = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], tools=TOOLS
    )
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls


async def test_bad_tool_and_schema_shapes_are_400s_with_tool_calls_off_or_on(
    start_simulator: StartSimulator,
) -> None:
    """A malformed ``tools`` or ``response_format`` is the client's error, in OpenAI's
    shape; it was a 500 (the sampler read it even with tool calls off)."""
    user = [{"role": "user", "content": "x"}]
    bodies: list[dict[str, Any]] = [
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
        {"tools": "f"},
        {"tools": [{"type": "function", "function": {"name": "has space"}}]},
        {"tools": TOOLS, "tool_choice": "sometimes"},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 1}}},
        {"response_format": {"type": "xml"}},
    ]
    for tool_calls in (False, True):
        sim = await start_simulator(tool_calls=tool_calls)
        async with aiohttp.ClientSession() as session:
            for extra in bodies:
                body = {"model": MODEL, "messages": user, **extra}
                async with session.post(f"{sim.base_url}/chat/completions", json=body) as r:
                    error = (await r.json())["error"]
                    assert r.status == 400, (extra, error)
                    assert error["type"] == "invalid_request_error" and error["message"]


async def test_odd_but_valid_schemas_are_sampled_within_bounds(
    start_simulator: StartSimulator, connect: Connect
) -> None:
    """Any subschema is read without raising, and no schema makes a value past the
    sampler's bounds (a ``minItems`` of ten million froze the simulator)."""
    client = connect(await start_simulator(tool_calls=True))
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "maximum": 2},
            "low": {"type": "integer", "minimum": 0.5, "maximum": 1},
            "above": {"type": "number", "exclusiveMinimum": 10},
            "at": {"type": "string", "format": "date-time"},
            "mail": {"type": "string", "format": "email"},
            "long": {"type": "string", "minLength": 50},
            "short": {"type": "string", "maxLength": 2},
            "none": {"type": "array", "maxItems": 0},
            "many": {"type": "array", "minItems": 10_000_000, "items": {"type": "string"}},
            "odd": {"anyOf": [1, "x"]},
            "bad": {"type": "integer", "minimum": "low"},
            "weird": 7,
        },
    }
    tool = {"type": "function", "function": {"name": "f", "parameters": schema}}
    reply = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "x"}],
        tools=[tool],  # type: ignore[list-item]
    )
    call = (reply.choices[0].message.tool_calls or [])[0]
    value = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert value["n"] <= 2 and value["low"] >= 0.5 and value["above"] > 10
    assert value["at"] == "2026-01-01T00:00:00Z" and value["mail"].endswith("@example.com")
    assert len(value["long"]) >= 50 and len(value["short"]) <= 2
    assert value["none"] == [] and len(value["many"]) == MAX_ITEMS
    assert value["odd"] is None and value["bad"] == 3 and value["weird"] is None
    nested: dict[str, Any] = {"type": "array", "minItems": 1000, "items": {}}
    for _ in range(6):
        nested = {"type": "array", "minItems": 1000, "items": nested}
    assert len(json.dumps(sample(nested, "deep"))) < 100_000


async def test_anthropic_tools_are_called_in_turn_as_tool_use_blocks(
    start_simulator: StartSimulator,
) -> None:
    anthropic = pytest.importorskip("anthropic")
    sim = await start_simulator(tool_calls=True)
    tools: Any = [
        {"name": "weather", "input_schema": TOOLS[0]["function"]["parameters"]},
        {"name": "clock", "input_schema": {"type": "object"}},
    ]
    async with anthropic.AsyncAnthropic(base_url=sim.url, api_key="k", max_retries=0) as client:
        messages: list[Any] = [{"role": "user", "content": "Plan my trip"}]
        called = []
        for _ in range(2):
            reply = await client.messages.create(
                model=MODEL, max_tokens=200, messages=messages, tools=tools
            )
            assert reply.stop_reason == "tool_use"
            (block,) = reply.content
            assert block.type == "tool_use" and block.id.startswith("toolu_")
            called.append(block.name)
            if block.name == "weather":
                assert block.input.keys() == {"city", "days"}
            messages.append({"role": "assistant", "content": [block.model_dump()]})
            result = {"type": "tool_result", "tool_use_id": block.id, "content": "ok"}
            messages.append({"role": "user", "content": [result]})
        assert called == ["weather", "clock"]
        final = await client.messages.create(
            model=MODEL, max_tokens=200, messages=messages, tools=tools
        )
        assert final.stop_reason == "end_turn" and final.content[0].type == "text"

        first = messages[:1]
        async with client.messages.stream(
            model=MODEL, max_tokens=200, messages=first, tools=tools
        ) as stream:
            streamed = await stream.get_final_message()
        plain = await client.messages.create(
            model=MODEL, max_tokens=200, messages=first, tools=tools
        )
        assert streamed.stop_reason == "tool_use"
        assert streamed.content[0].model_dump() == plain.content[0].model_dump()
        named = await client.messages.create(
            model=MODEL,
            max_tokens=200,
            messages=first,
            tools=tools,
            tool_choice={"type": "tool", "name": "clock"},
        )
        assert named.content[0].name == "clock"
