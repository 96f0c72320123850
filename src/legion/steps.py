"""Steps as the layers below the context see them.

``ctx.llm`` and ``ctx.vectors`` record their calls as steps of the task; they do so
through a `StepRecorder`, the part of a context they need, so that they never
import the context itself. `step_key` is the one rule every context uses to name a
step: the first ``name`` is ``name``, the second ``name#2``, and so on.

Inside a branch of ``ctx.gather`` that is a coroutine (it may run several steps), a
step's name is scoped by the branch (`BRANCH`): ``parse@1`` for a step ``parse`` of the
second branch. Counted across branches, the n-th ``parse`` would be whichever branch got
there n-th, which depends on timing: a replay, whose recorded steps answer at once,
would hand each branch another branch's result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from typing import Any, Protocol

from legion import codec
from legion.diagnostics.unawaited import Pending, SiteRef
from legion.errors import StepNameError
from legion.task import TaskUsage


class StepRecorder(Protocol):
    """What records the steps and calls of one attempt (a `legion.context.Context`)."""

    @property
    def usage(self) -> TaskUsage:
        """What the attempt's LLM calls used."""
        ...

    def made(self, pending: Pending[Any]) -> None:
        """Keep track of a pending call made for the agent (reported if never awaited)."""
        ...

    async def record(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        site: SiteRef | None,
        *,
        inputs: tuple[Any, ...] | None = None,
        encode: Callable[[Any], Any] | None = None,
        decode: Callable[[Any], Any] | None = None,
        usage: bool = False,
    ) -> Any:
        """Replay the step named ``name`` or run ``fn(*args, **kwargs)`` and record it
        (``encode``: what ``fn`` answers to the JSON recorded; ``decode``: the recorded JSON
        to what the step answers; ``usage``: the recorded JSON is an LLM call's, counted
        in the task's usage, replayed or new)."""
        ...


class Waiter(StepRecorder, Protocol):
    """What the durable waits (``legion.waiting``) need of a context: its task, its steps
    so far and the signals it has taken."""

    @property
    def task_id(self) -> int: ...

    @property
    def attempt(self) -> int: ...

    @property
    def recorded_steps(self) -> Mapping[str, bytes]: ...

    @property
    def signals_taken(self) -> dict[str, int]: ...

    @property
    def waits_out(self) -> set[str]:
        """The events this attempt's waits are waiting for now (one at a time each)."""
        ...

    def step_count(self, name: str) -> int:
        """How many steps named ``name`` this attempt has made so far."""
        ...


BRANCH: ContextVar[str] = ContextVar("legion_branch", default="")
"""The ``ctx.gather`` branch the current code runs in: ``""`` outside any, ``"1"`` in the
second branch of a gather, ``"1.0"`` in the first branch of a gather inside that one."""

_BRANCH_SUFFIX = re.compile(r"@\d+(\.\d+)*$")


def scoped(name: str) -> str:
    """``name`` as the steps of the current branch are counted by (see the module)."""
    branch = BRANCH.get()
    return f"{name}@{branch}" if branch else name


def step_key(counts: dict[str, int], name: str) -> str:
    """The key of the next step called ``name`` in the current branch, counted in
    ``counts``: ``name`` the first time, ``name#2`` the second, and so on (scoped by
    the branch: see the module)."""
    if (
        type(name) is not str
        or not name.isascii()
        or len(name) > codec.SHORT_NAME
        or "\x00" in name
    ):
        try:
            name = codec.checked_text(name, "a step's name")
        except (TypeError, ValueError) as exc:  # (not text, a lone surrogate)
            raise StepNameError(str(exc)) from None
    if "@" in name and _BRANCH_SUFFIX.search(name):
        raise StepNameError(
            f"step name {name!r} ends in '@' and a number, as the steps of a gather's "
            "branches are keyed: give a name that does not"
        )
    name = scoped(name)
    n = counts.get(name, 0) + 1
    counts[name] = n
    if n == 1:
        if "#" in name:
            _refuse_namesake(counts, name)
        return name
    key = f"{name}#{n}"
    if key in counts:  # (a step was given this very name: the two would share a record)
        _refuse_namesake(counts, key)
    return key


def _refuse_namesake(counts: dict[str, int], key: str) -> None:
    """Raise if ``key``, a step's own name, is also the key of an earlier step counted
    in ``counts`` (a step named ``fetch#2``, and a second ``fetch``): the two would share
    one record, and a replay would answer the one with the other's result."""
    base, _, nth = key.rpartition("#")
    if nth.isdigit() and nth[0] != "0" and counts.get(base, 0) >= int(nth) >= 2:
        raise StepNameError(
            f"step name {key!r} is also the key of step {int(nth)} named {base!r}: the two "
            "would share one record; give a name that does not end in '#' and a number"
        )
