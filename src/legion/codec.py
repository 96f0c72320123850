"""JSON encoding of everything legion stores: inputs, outputs, step results, memory.

Values are stored as JSON so the store stays readable by people, dashboards and other
languages. pydantic models and dataclasses are encoded as objects; anything else that
JSON cannot represent raises `legion.errors.OutputError` with the reason.
"""

from __future__ import annotations

from typing import Any

import orjson

from legion.errors import OutputError

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(value: Any) -> Any:
    # Imported here, not at the top, so that `import legion` starts without pydantic; only
    # values orjson cannot encode itself come here.
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """Encode ``value`` as JSON bytes, or raise `OutputError` saying why not."""
    try:
        return orjson.dumps(value, default=_default, option=_OPTIONS)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise OutputError(f"cannot store value as JSON: {exc}") from exc


loads = orjson.loads
JSONDecodeError = orjson.JSONDecodeError
