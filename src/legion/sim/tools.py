"""Deterministic tool calls and structured output, for agent frameworks under test.

A request that offers tools gets a call to the first tool the conversation has not
called yet (tool calls of earlier assistant messages count), its arguments built
from the tool's JSON schema; once every tool has been called it gets a text answer.
A tool choice naming a tool calls that one; ``"none"`` calls none. A text answer
to a request whose ``response_format`` is a ``json_schema`` is a JSON value of that
schema. So a framework's loop — call a tool, read its result, hand off, give a
structured final answer — runs to its end, the same way every time.

Each dialect reads its own request format into an `Offer`; what is answered is decided
here, the same for both. Values follow a schema's types, ``enum``/``const``/``default``,
numeric bounds, string ``format``s, lengths and item counts; a ``pattern`` is not
followed. Sampling is bounded (`MAX_ITEMS` items an array, `MAX_VALUES` values an
answer), so no schema makes the simulator build a value that stalls it.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from legion.sim.behaviour import _WORDS, Completion, generate_completion
from legion.sim.config import SimConfig

_CHARS_PER_TOKEN = 4
_MAX_DEPTH = 8
MAX_ITEMS = 64
"""The most items one sampled array has (fewer than its ``minItems`` above that)."""
MAX_VALUES = 4096
"""The most values one sampled answer holds; past it, values are ``null``."""
_MAX_STRING = 4096
_FORMATS = {
    "date-time": "2026-01-01T00:00:00Z",
    "date": "2026-01-01",
    "time": "00:00:00",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "hostname": "example.com",
}


class ToolCallHead(NamedTuple):
    """The id and function name of the tool call a completion makes (its text holds the
    arguments)."""

    id: str
    name: str


class Script(NamedTuple):
    """What a request offering tools or asking for JSON is answered with."""

    tool: ToolCallHead | None
    text: str


class Offer(NamedTuple):
    """What a request offers and asks, in terms both dialects share."""

    tools: tuple[tuple[str, Any], ...] = ()
    """Each tool's name and the JSON schema of its arguments."""
    choice: str = "auto"
    """``"auto"``, ``"none"``, ``"required"`` (a tool must be called), or ``"named"``."""
    named: str | None = None
    """The tool a ``"named"`` choice names."""
    called: frozenset[str] = frozenset()
    """The tools the conversation has called already."""
    response_schema: Any = None
    """The JSON schema a text answer must follow, if any."""


def script_for(
    offer: Offer | None, conversation: Sequence[Any], id_prefix: str = "call_"
) -> Script | None:
    """The scripted answer to a request that ``offer``s tools or asks for JSON, or
    ``None`` for the usual generated text; the conversation makes a tool call's id."""
    if offer is None:
        return None
    tool = _tool_to_call(offer)
    if tool is not None:
        name, schema = tool
        seed = orjson.dumps(conversation, option=orjson.OPT_SORT_KEYS)
        digest = hashlib.blake2b(seed + name.encode(), digest_size=8).hexdigest()
        arguments = sample(schema if schema is not None else {"type": "object"}, name)
        if not isinstance(arguments, dict):
            arguments = {}
        return Script(ToolCallHead(f"{id_prefix}{digest}", name), orjson.dumps(arguments).decode())
    if offer.response_schema is not None:
        return Script(None, orjson.dumps(sample(offer.response_schema, "answer")).decode())
    return None


def completion_of(script: Script) -> Completion:
    """The script as a completion: its text cut into tokens of 4 characters."""
    text = script.text
    pieces = tuple(text[i : i + _CHARS_PER_TOKEN] for i in range(0, len(text), _CHARS_PER_TOKEN))
    return Completion(pieces or ("",), "tool_calls" if script.tool else "stop", script.tool)


def _tool_to_call(offer: Offer) -> tuple[str, Any] | None:
    tools = offer.tools
    if not tools or offer.choice == "none":
        return None
    if offer.choice == "named":
        return next((t for t in tools if t[0] == offer.named), None)
    fresh = next((t for t in tools if t[0] not in offer.called), None)
    if fresh is None and offer.choice == "required":
        return tools[-1]
    return fresh


def sample(schema: Any, name: str) -> Any:
    """A value of the JSON ``schema`` (its ``$defs`` resolved), the same for the same
    schema and ``name``: strings are words picked by a digest of the property's name.
    Any JSON is taken as a schema: what is not one gives ``null`` (``true``, a word)."""
    defs = _mapping(schema.get("$defs") or schema.get("definitions")) if _is_map(schema) else {}
    return _Sampler(defs).value(schema, name, 0)


class _Sampler:
    __slots__ = ("_defs", "_left")

    def __init__(self, defs: Mapping[str, Any]) -> None:
        self._defs = defs
        self._left = MAX_VALUES

    def value(self, schema: Any, name: str, depth: int) -> Any:
        if depth > _MAX_DEPTH or self._left <= 0:
            return None
        self._left -= 1
        if schema is True:
            return _word(name)
        if not _is_map(schema):
            return None
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return self.value(self._defs.get(ref.rsplit("/", 1)[-1]) or {}, name, depth + 1)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[0]
        if "default" in schema:
            return schema["default"]
        for key in ("anyOf", "oneOf", "allOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                usable = [o for o in options if _is_map(o) and o.get("type") != "null"]
                return self.value(usable[0], name, depth + 1) if usable else None
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind == "object" or (kind is None and "properties" in schema):
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, name, depth)
        if kind == "integer":
            return _integer(schema)
        if kind == "number":
            return _number(schema)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return _string(schema, name)

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = _mapping(schema.get("properties"))
        required = schema.get("required")
        if isinstance(required, list):
            keys = [k for k in required if isinstance(k, str)]
        else:
            keys = list(properties)
        return {k: self.value(properties.get(k, True), k, depth + 1) for k in keys}

    def _array(self, schema: Mapping[str, Any], name: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items", True)
        if isinstance(items, list):  # the older tuple form
            prefix, items = items, schema.get("additionalItems", True)
        fixed = prefix if isinstance(prefix, list) else []
        least = _whole(schema.get("minItems"), 1)
        most = _whole(schema.get("maxItems"), MAX_ITEMS)
        count = min(max(least, len(fixed), 1), most, MAX_ITEMS)
        return [
            self.value(fixed[i] if i < len(fixed) else items, name, depth + 1) for i in range(count)
        ]


def _integer(schema: Mapping[str, Any]) -> int:
    low, high = _bounds(schema)
    value = 3
    if low is not None:
        lowest = math.floor(low[0]) + 1 if low[1] else math.ceil(low[0])
        value = max(value, lowest)
    if high is not None:
        highest = math.ceil(high[0]) - 1 if high[1] else math.floor(high[0])
        value = min(value, highest)
    return value


def _number(schema: Mapping[str, Any]) -> float:
    low, high = _bounds(schema)
    value = 1.5
    if low is not None and (value < low[0] or (low[1] and value <= low[0])):
        value = low[0] + (0.5 if low[1] else 0.0)
    if high is not None and (value > high[0] or (high[1] and value >= high[0])):
        value = (low[0] + high[0]) / 2 if low is not None else high[0] - (0.5 if high[1] else 0.0)
    return float(value)


def _bounds(
    schema: Mapping[str, Any],
) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None]:
    """The lower and upper bound of a number's schema, each ``(value, exclusive)``."""

    def bound(inclusive: str, exclusive: str) -> tuple[float, bool] | None:
        found = _finite(schema.get(exclusive))
        if found is not None:
            return found, True
        found = _finite(schema.get(inclusive))
        return None if found is None else (found, False)

    return bound("minimum", "exclusiveMinimum"), bound("maximum", "exclusiveMaximum")


def _string(schema: Mapping[str, Any], name: str) -> str:
    word = _word(name)
    kind = schema.get("format")
    if kind in _FORMATS:
        text = _FORMATS[kind]
    elif kind == "email":
        text = f"{word}@example.com"
    elif kind in ("uri", "url", "iri"):
        text = f"https://example.com/{word}"
    elif kind == "uuid":
        text = str(uuid.UUID(bytes=hashlib.blake2b(name.encode(), digest_size=16).digest()))
    else:
        text = word
    least = min(_whole(schema.get("minLength"), 0), _MAX_STRING)
    while len(text) < least:
        text = f"{text} {word}"
    most = _whole(schema.get("maxLength"), None)
    return text[:most] if most is not None else text


def _word(name: str) -> str:
    digest = hashlib.blake2b(name.encode(), digest_size=1).digest()
    return _WORDS[digest[0] & 127]


def _is_map(value: Any) -> bool:
    return isinstance(value, Mapping)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _whole(value: Any, default: Any) -> Any:
    """A non-negative integer setting (``minItems``, ``maxLength``...), or ``default``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        return default
    return int(min(value, 2**31))


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
