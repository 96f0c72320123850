"""``tool_calls=True``: the simulator calls the tools it is offered, in turn, and answers
a ``json_schema`` response format with JSON of that schema."""

from __future__ import annotations

import json
from typing import Any

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
