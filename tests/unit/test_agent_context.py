"""Both contexts an agent can be handed are an AgentContext: the one of an instance in its
worker (legion.Context) and the stand-in of an executor that runs it elsewhere
(RemoteContext). mypy checks the assignments below (it covers the tests); the test
checks at run time that neither lacks a member of the Protocol."""

from __future__ import annotations

import pytest

import legion
from legion.context import AgentContext, Context
from legion.executors.remote import RemoteContext
from legion.steps import BRANCH, step_key


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


@pytest.mark.parametrize(
    "names",
    [
        ("fetch", "fetch", "fetch#2"),  # the second fetch's key, then that name
        ("fetch#2", "fetch", "fetch"),  # that name, then the second fetch
        ("fetch", "fetch", "fetch", "fetch#3"),
    ],
)
def test_a_step_named_as_another_steps_key_is_refused(names: tuple[str, ...]) -> None:
    # The two would share one record: a replay would answer one with the other's result.
    counts: dict[str, int] = {}
    *fine, last = names
    for name in fine:
        step_key(counts, name)
    with pytest.raises(ValueError, match="would share one record"):
        step_key(counts, last)


def test_names_with_a_hash_that_no_key_shares_are_kept() -> None:
    counts: dict[str, int] = {}
    names = ("fetch#2", "fetch", "v#1", "v", "v", "x#02", "x", "x", "a#b", "fetch#3")
    keys = [step_key(counts, n) for n in names]
    assert keys == ["fetch#2", "fetch", "v#1", "v", "v#2", "x#02", "x", "x#2", "a#b", "fetch#3"]


def test_the_steps_of_a_gathers_branch_are_named_within_it() -> None:
    counts: dict[str, int] = {}
    token = BRANCH.set("1")
    try:
        assert [step_key(counts, "parse") for _ in range(2)] == ["parse@1", "parse@1#2"]
        BRANCH.set("1.0")  # a gather inside that branch
        assert step_key(counts, "parse") == "parse@1.0"
    finally:
        BRANCH.reset(token)
    assert step_key(counts, "parse") == "parse"  # outside any branch, as ever
    # A name keyed as a branch's step would be would share its record: refused.
    for name in ("parse@1", "x@0.2", "y@12"):
        with pytest.raises(ValueError, match="ends in '@' and a number"):
            step_key(counts, name)
    assert step_key(counts, "me@example.com") == "me@example.com"
