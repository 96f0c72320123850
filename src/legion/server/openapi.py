"""The OpenAPI document, made to say what the server does.

FastAPI writes the routes; this adds what it cannot know:

- the submit and signal routes read their bodies themselves (strict JSON, any content
  type), so their schemas (``TaskIn``, ``BatchIn``, ``SignalIn``) are declared here;
- ``TaskIn`` is one of the served agents' own shapes: ``agent`` names the agent and
  ``input`` follows that agent's parameters (what `legion.Agent.arguments` accepts),
  so a body the document allows is a body the server takes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from legion.agent import Agent
from legion.server.schemas import BatchIn, SignalIn

_REF = "#/components/schemas/{model}"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def complete(schema: dict[str, Any], agents: Mapping[str, Agent]) -> dict[str, Any]:
    """``schema`` (FastAPI's document) with the request bodies of the submit and signal
    routes."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["SignalIn"] = SignalIn.model_json_schema(ref_template=_REF)
    batch = BatchIn.model_json_schema(ref_template=_REF)
    components.update(batch.pop("$defs", {}))
    components["BatchIn"] = batch
    base = components["TaskIn"]
    variants = []
    for name in sorted(agents):
        shape = agents[name].input_schema(ref_template=_REF)
        components.update(shape.pop("$defs", {}))
        variant = f"TaskIn.{_UNSAFE.sub('_', name)}"
        properties = {**base["properties"], "agent": {"type": "string", "const": name}}
        properties["input"] = {
            **shape,
            "description": base["properties"]["input"].get("description", ""),
        }
        components[variant] = {
            **base,
            "title": f"TaskIn ({name})",
            "properties": properties,
            "required": ["agent", "input"] if agents[name].params else ["agent"],
        }
        variants.append({"$ref": _REF.format(model=variant)})
    if variants:
        components["TaskIn"] = {
            "title": "TaskIn",
            "description": base.get("description", ""),
            "oneOf": variants,
        }
    return schema
