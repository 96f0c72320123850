"""The options shared by ``legion run`` and ``legion worker``: LLM routes and executors.

``--llm SPEC`` or ``--llm NAME=SPEC`` (repeatable) adds a route, and the same NAME
given again adds a deployment to that route's pool; ``--rpm``, ``--tpm``
and ``--max-in-flight`` apply to every route given with ``--llm``; ``--config FILE``
reads the ``[llm]`` table of a TOML file (``legion.toml`` in the current folder is read
when it exists and nothing else is given). With none of them, agents get the built-in
simulator with realistic latency and limits, so examples run without keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legion.errors import ConfigError
from legion.llm.config import LLMConfig, RouteConfig, load_config, parse_provider_spec

if TYPE_CHECKING:
    from collections.abc import Sequence

    from legion.agent import Agent
    from legion.executors import Executor

DEFAULT_CONFIG = Path("legion.toml")

# The simulator behind the default route: latency and limits of a typical hosted model.
DEFAULT_SIM: dict[str, Any] = {
    "latency": 0.25,
    "latency_jitter": 0.15,
    "tokens_per_second": 250.0,
    "rpm": 3000,
    "tpm": 2_000_000,
}


@dataclass(frozen=True, slots=True)
class LLMOptions:
    specs: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    max_in_flight: int | None = None
    config: Path | None = None


@dataclass(frozen=True, slots=True)
class ExecutorOptions:
    """``--executor``, ``--ray-address``, ``--pool-size``, ``--memory-limit``."""

    executor: str | None = None
    ray_address: str | None = None
    pool_size: int | None = None
    memory_limit_mb: int | None = None

    def check(self, agents: Sequence[Agent]) -> None:
        """Refuse (`ConfigError`) --pool-size or --memory-limit where no agent will run in
        a child process: they were taken, and ignored (a memory bomb ran in the worker)."""
        process = self.executor == "process" or (
            self.executor is None and any(a.options.executor == "process" for a in agents)
        )
        if not process and (self.pool_size is not None or self.memory_limit_mb is not None):
            raise ConfigError(
                "--pool-size and --memory-limit are for the process executor, which none of "
                f"{', '.join(sorted(a.name for a in agents))} runs on: give --executor process"
            )

    def build(self) -> dict[str, Executor]:
        from legion.executors import executors_from_options

        return executors_from_options(
            self.executor, self.ray_address, self.pool_size, self.memory_limit_mb
        )


def llm_config(opts: LLMOptions) -> tuple[LLMConfig, str]:
    """The routes to build, and one line that says where they came from."""
    if opts.specs:
        # The same NAME given several times is a pool of deployments (keys, regions,
        # providers): each call goes to the one where it starts soonest.
        routes = tuple(_route(spec, opts, i) for i, spec in enumerate(opts.specs))
        return LLMConfig(routes, routes[0].name), "llm: " + ", ".join(_describe(r) for r in routes)
    path = opts.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    if path is not None:
        if opts.rpm or opts.tpm or opts.max_in_flight:
            raise ConfigError(
                "--rpm/--tpm/--max-in-flight go with --llm; set limits in the config file"
            )
        config = load_config(path)
        return config, f"llm: {path} ({', '.join(_describe(r) for r in config.routes)})"
    route = _route("sim", opts, 0)
    note = (
        f"llm: {_describe(route)} (the built-in simulator; --llm openai:MODEL for a real provider)"
    )
    return LLMConfig((route,), route.name), note


def _route(spec: str, opts: LLMOptions, index: int) -> RouteConfig:
    name, sep, rest = spec.partition("=")
    if not sep:
        name, rest = ("default" if index == 0 else f"llm{index + 1}"), spec
    elif not name.strip():
        raise ConfigError(f"--llm {spec}: NAME=SPEC names the route; its name is empty")
    options: dict[str, Any] = {}
    for key in ("rpm", "tpm", "max_in_flight"):
        value = getattr(opts, key)
        if value is not None:
            options[key] = value
    if rest == "sim" or rest.startswith("sim:"):
        sim = dict(DEFAULT_SIM)
        # On the simulator, the limits given are the provider's real limits too.
        sim.update({k: v for k, v in options.items() if k in ("rpm", "tpm")})
        options = {"rpm": sim["rpm"], "tpm": sim["tpm"], **options, "simulator": sim}
    return parse_provider_spec(rest, name=name, options=options)


def _describe(route: RouteConfig) -> str:
    limits = [f"{v} {k}" for k, v in (("rpm", route.rpm), ("tpm", route.tpm)) if v]
    return f"{route.name}={route.provider}:{route.model}" + (
        f" ({', '.join(limits)})" if limits else ""
    )
