"""What an agent instance needs and what a worker offers: placement by resources.

An agent declares its needs (``@legion.agent(resources={"memory_mb": 512})``, or tags:
``resources=["gpu"]``, or both: ``{"gpu": 1, "memory_mb": 512}``); a worker offers
resources (``legion worker --offer memory_mb=4096,gpu``). A tag is a resource of amount
1. A task carries its agent's needs into the store, and a worker leases it only if it
offers at least the amount of every resource the task needs (the store filters, in the
lease query itself); a worker that offers nothing leases only tasks that need nothing.

Names are lower-case words (``[a-z][a-z0-9_]*``); amounts are non-negative numbers.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping

Resources = Mapping[str, float]

_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def normalize(resources: Resources | Iterable[str] | None) -> dict[str, float]:
    """Needs or an offer as ``{name: amount}`` (tags become 1); ValueError if malformed."""
    if resources is None:
        return {}
    if isinstance(resources, str):
        raise ValueError(f"resources must be a mapping or a list of tags, not {resources!r}")
    items = resources.items() if isinstance(resources, Mapping) else ((t, 1.0) for t in resources)
    out: dict[str, float] = {}
    for name, amount in items:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"a resource name is a lower-case word (as memory_mb), not {name!r}")
        if (
            isinstance(amount, bool)
            or not isinstance(amount, int | float)
            or not 0 <= amount < math.inf  # (NaN and infinity: JSON holds neither)
        ):
            raise ValueError(
                f"resource {name}: the amount must be a finite number >= 0, not {amount!r}"
            )
        out[name] = float(amount)
    return dict(sorted(out.items()))


def parse_offer(text: str) -> dict[str, float]:
    """``--offer memory_mb=4096,gpu``: ``name=amount`` pairs and tags, comma-separated."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, amount = part.partition("=")
        try:
            value = float(amount) if sep else 1.0
        except ValueError:
            raise ValueError(f"--offer: {part!r} is not name=number or a tag") from None
        out[name.strip()] = value
    return normalize(out)


def encode(needs: Resources) -> str | None:
    """The needs as the store keeps them: canonical JSON, or None for none."""
    return json.dumps(dict(sorted(needs.items())), separators=(",", ":")) if needs else None


def satisfies(offer: Resources, needs: Resources) -> bool:
    """Whether ``offer`` covers ``needs`` (what the store's lease filter computes)."""
    return all(offer.get(name, 0.0) >= amount for name, amount in needs.items())


def ray_options(needs: Resources, *, num_cpus: float, resources: Resources) -> dict[str, object]:
    """What a Ray task running one instance asks Ray's scheduler for, given the agent's
    needs and the executor's defaults: ``cpu`` is ``num_cpus``, ``gpu`` is ``num_gpus``,
    ``memory_mb`` is ``memory`` (in bytes), anything else a custom resource. So Ray's
    autoscaler sees the demand, and places the instance on a node that has it."""
    options: dict[str, object] = {"num_cpus": needs.get("cpu", num_cpus)}
    custom = dict(resources)
    for name, amount in needs.items():
        if name == "gpu":
            options["num_gpus"] = amount
        elif name == "memory_mb":
            options["memory"] = int(amount * 1024 * 1024)
        elif name != "cpu":
            custom[name] = amount
    options["resources"] = custom
    return options
