"""Deterministic tool calls and structured output, for agent frameworks under test.

A request that offers ``tools`` gets a call to the first tool the conversation has not
called yet (tool calls of earlier assistant messages count), its arguments built
from the tool's JSON schema; once every tool has been called it gets a text answer.
``tool_choice`` naming a function calls that one; ``"none"`` calls none. A text answer
to a request whose ``response_format`` is a ``json_schema`` is a JSON value of that
schema. So a framework's loop — call a tool, read its result, hand off, give a
structured final answer — runs to its end, the same way every time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from legion.sim.behaviour import _WORDS, Completion, generate_completion
from legion.sim.config import SimConfig

_CHARS_PER_TOKEN = 4
_MAX_DEPTH = 8


class ToolCallHead(NamedTuple):
    """The id and function name of the tool call a completion makes (its text holds the
    arguments)."""

    id: str
    name: str


class Script(NamedTuple):
    """What a request offering tools or asking for JSON is answered with."""

    tool: ToolCallHead | None
    text: str


def script_for(body: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]) -> Script | None:
    """The scripted answer to a chat request, or ``None`` for the usual generated text."""
    seed = orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)
    tool = _tool_to_call(body, messages)
    if tool is not None:
        function = tool.get("function") or {}
        name = str(function.get("name") or "")
        digest = hashlib.blake2b(seed + name.encode(), digest_size=8).hexdigest()
        arguments = sample(function.get("parameters") or {"type": "object"}, name)
        return Script(ToolCallHead(f"call_{digest}", name), orjson.dumps(arguments).decode())
    schema = _response_schema(body.get("response_format"))
    if schema is not None:
        return Script(None, orjson.dumps(sample(schema, "answer")).decode())
    return None


def completion_of(script: Script) -> Completion:
    """The script as a completion: its text cut into tokens of 4 characters."""
    text = script.text
    pieces = tuple(text[i : i + _CHARS_PER_TOKEN] for i in range(0, len(text), _CHARS_PER_TOKEN))
    return Completion(pieces or ("",), "tool_calls" if script.tool else "stop", script.tool)


def _tool_to_call(
    body: Mapping[str, Any], messages: Sequence[Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    tools = [t for t in body.get("tools") or () if isinstance(t, Mapping) and t.get("function")]
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return None
    if isinstance(choice, Mapping):
        wanted = (choice.get("function") or {}).get("name")
        return next((t for t in tools if t["function"].get("name") == wanted), None)
    called = {
        (call.get("function") or {}).get("name")
        for message in messages
        if message.get("role") == "assistant"
        for call in message.get("tool_calls") or ()
        if isinstance(call, Mapping)
    }
    fresh = next((t for t in tools if t["function"].get("name") not in called), None)
    if fresh is None and choice == "required":
        return tools[-1]
    return fresh


def _response_schema(response_format: Any) -> Mapping[str, Any] | None:
    if not isinstance(response_format, Mapping):
        return None
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, Mapping) else {"type": "object"}
    if response_format.get("type") == "json_object":
        return {"type": "object"}
    return None


def sample(schema: Mapping[str, Any], name: str) -> Any:
    """A value of the JSON ``schema`` (its ``$defs`` resolved), the same for the same
    schema and ``name``: strings are words picked by a digest of the property's name."""
    return _sample(schema, schema.get("$defs") or schema.get("definitions") or {}, name, 0)


def _sample(schema: Mapping[str, Any], defs: Mapping[str, Any], name: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref.rsplit("/", 1)[-1])
        return _sample(target or {}, defs, name, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key) or () if o.get("type") != "null"]
        if options:
            return _sample(options[0], defs, name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties: Mapping[str, Any] = schema.get("properties") or {}
        required = schema.get("required")
        keys = [k for k in properties if required is None or k in required]
        return {k: _sample(properties[k], defs, k, depth + 1) for k in keys}
    if kind == "array":
        count = max(1, int(schema.get("minItems") or 1))
        items = schema.get("items") or {}
        return [_sample(items, defs, name, depth + 1) for _ in range(count)]
    if kind == "integer":
        return int(schema.get("minimum", 3))
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    digest = hashlib.blake2b(name.encode(), digest_size=1).digest()
    return _WORDS[digest[0] & 127]


def answer(
    config: SimConfig,
    model: str,
    messages: Sequence[Mapping[str, object]],
    *,
    limit: int | None,
    stop: Sequence[str],
    script: Script | None,
) -> Completion:
    """What the simulator answers a chat request with, on either endpoint (the standard
    one and the batch APIs): a generated completion, or the tool script's next turn."""
    if script is not None and config.tool_calls:
        return completion_of(script)
    return generate_completion(
        model,
        messages,
        min_tokens=config.min_output_tokens,
        max_tokens=config.max_output_tokens,
        limit=limit,
        stop=stop,
    )
