"""The options ``legion run``, ``legion worker`` and ``legion serve`` have in common are
declared alike (names, defaults, types, bounds; the help may differ), and
`legion.cli.wiring.RuntimeOptions` starts from `Runtime`'s own defaults: the same flags
give the same parts on every command."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest
import typer
from typer.core import TyperGroup, TyperOption

from legion.cli.app import app
from legion.cli.llm_options import ExecutorOptions
from legion.cli.wiring import RuntimeOptions, build_runtime, llm_options
from legion.errors import ConfigError
from legion.run.runtime import Runtime

EVERY = ("run", "worker", "serve")

SHARED = {
    # flag's parameter: the commands that have it
    "store": EVERY,
    "concurrency": EVERY,
    "lease_seconds": EVERY,
    "llm": EVERY,
    "rpm": EVERY,
    "tpm": EVERY,
    "max_in_flight": EVERY,
    "config": EVERY,
    "strict": ("run", "worker"),
    "executor": ("run", "worker"),
    "ray_address": ("run", "worker"),
    "pool_size": ("run", "worker"),
    "memory_limit": ("run", "worker"),
    "deadline": ("run", "worker"),
    "max_cost": ("run", "worker"),
    "max_tokens": ("run", "worker"),
    "max_calls": ("run", "worker"),
    "tenant_max_cost": ("worker", "serve"),
    "tenant_max_tokens": ("worker", "serve"),
    "tenant_max_calls": ("worker", "serve"),
}


def option(command: str, name: str) -> TyperOption:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    found = [p for p in group.commands[command].params if p.name == name]
    assert len(found) == 1, f"legion {command} has no --{name.replace('_', '-')}"
    assert isinstance(found[0], TyperOption)
    return found[0]


def declaration(opt: TyperOption) -> tuple[object, ...]:
    return (
        tuple(opt.opts),
        tuple(opt.secondary_opts),
        opt.default,
        opt.type_descriptor.annotation,
        getattr(opt, "min", None),
        getattr(opt, "max", None),
        opt.multiple,
        opt.is_flag,
        opt.envvar,
    )


@pytest.mark.parametrize("name", sorted(SHARED))
def test_a_shared_option_is_declared_alike_on_every_command(name: str) -> None:
    first, *others = SHARED[name]
    expected = declaration(option(first, name))
    for command in others:
        assert declaration(option(command, name)) == expected, (first, command)


def test_the_options_default_to_the_runtime_s_own() -> None:
    runtime = inspect.signature(Runtime.__init__).parameters
    options = RuntimeOptions(store="sqlite:///:memory:")
    for name in (
        "concurrency",
        "lease_seconds",
        "worker",
        "strict",
        "drain_timeout",
        "max_loop_lag",
        "max_memory_mb",
    ):
        assert getattr(options, name) == runtime[name].default, name
    # Every field but the LLM routes, executors and budgets is one of the runtime's.
    own = {"store", "llm", "executors", "budget", "tenant_budget"}
    assert {f.name for f in fields(RuntimeOptions)} - own <= set(runtime)


def test_llm_flags_become_llm_options() -> None:
    opts = llm_options(["sim", "strong=sim"], 60, None, 4, None)
    assert opts.specs == ("sim", "strong=sim")
    assert (opts.rpm, opts.tpm, opts.max_in_flight, opts.config) == (60, None, 4, None)
    assert llm_options(None, None, None, None, None).specs == ()


def test_a_command_without_a_worker_builds_no_executor() -> None:
    # An unknown executor is refused when the executors are built: never without a worker.
    bogus = ExecutorOptions(executor="nowhere")
    rt = build_runtime(RuntimeOptions(store="sqlite:///:memory:", worker=False, executors=bogus))
    assert rt.worker is None and rt.llm is None
    with pytest.raises(ConfigError, match="unknown executor 'nowhere'"):
        build_runtime(RuntimeOptions(store="sqlite:///:memory:", executors=bogus))
