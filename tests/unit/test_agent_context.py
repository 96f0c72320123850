"""Both contexts an agent can be handed are an AgentContext: the one of an instance in its
worker (legion.Context) and the stand-in of an executor that runs it elsewhere
(RemoteContext). mypy checks the assignments below (it covers the tests); the test
checks at run time that neither lacks a member of the Protocol."""

from __future__ import annotations

import legion
from legion.context import AgentContext, Context
from legion.executors.remote import RemoteContext
from legion.steps import step_key


def as_agent_contexts(local: Context, remote: RemoteContext) -> tuple[AgentContext, ...]:
    """Type-checked: each context is assignable to the Protocol."""
    return local, remote


def members() -> list[str]:
    return [n for n in vars(AgentContext) if not n.startswith("_")]


def test_agent_context_is_public() -> None:
    assert legion.AgentContext is AgentContext


def test_both_contexts_have_every_member_of_the_protocol() -> None:
    assert {"step", "gather", "memory", "llm", "vectors", "log", "task_id"} <= set(members())
    for cls in (Context, RemoteContext):
        missing = [name for name in members() if not hasattr(cls, name)]
        assert missing == [], f"{cls.__name__} lacks {missing}"


def test_one_rule_names_the_steps() -> None:
    counts: dict[str, int] = {}
    keys = [step_key(counts, n) for n in ("fetch", "fetch", "parse", "fetch")]
    assert keys == ["fetch", "fetch#2", "parse", "fetch#3"]
