"""Values of the LLM layer: usage arithmetic and exact record/replay of responses."""

from __future__ import annotations

import orjson
import pytest

from legion.llm import ChatResponse, ToolCall, Usage


def test_usage_total_and_sum() -> None:
    assert Usage(3, 4).total == 7
    assert Usage(1, 2) + Usage(10, 20) == Usage(11, 22)


def test_response_round_trips_through_json_exactly() -> None:
    response = ChatResponse(
        text="Hello",
        tool_calls=(ToolCall("call_1", "lookup", '{"q": "x"}'),),
        finish_reason="tool_calls",
        usage=Usage(12, 5),
        model="gpt-4o-mini-2024-07-18",
        provider="openai",
    )
    stored = orjson.dumps(response.to_json())  # as a store would keep it
    assert ChatResponse.from_json(orjson.loads(stored)) == response


@pytest.mark.parametrize(
    "data",
    [
        {},
        {
            "text": "x",
            "tool_calls": [],
            "finish_reason": None,
            "usage": {},
            "model": "",
            "provider": "",
        },
        {
            "text": 3,
            "tool_calls": [],
            "finish_reason": None,
            "usage": {"prompt_tokens": 0, "completion_tokens": 0},
            "model": "",
            "provider": "",
        },
        {
            "text": "x",
            "tool_calls": [{"id": 1, "name": "f", "arguments": "{}"}],
            "finish_reason": None,
            "usage": {"prompt_tokens": 0, "completion_tokens": 0},
            "model": "",
            "provider": "",
        },
    ],
)
def test_from_json_rejects_what_is_not_a_record(data: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="not a recorded chat response"):
        ChatResponse.from_json(data)


def test_tool_calls_given_as_a_list_are_kept_as_the_tuple_a_replay_rebuilds() -> None:
    call = ToolCall("call_1", "lookup", "{}")
    response = ChatResponse("", [call], "tool_calls")  # type: ignore[arg-type]
    assert response.tool_calls == (call,)
    assert ChatResponse.from_json(response.to_json()) == response
