"""An error's message and traceback are kept to a bounded size, their start and end."""

from __future__ import annotations

from pathlib import Path

import legion
from legion.task import MAX_MESSAGE, MAX_TRACEBACK, TaskStatus


@legion.agent(retries=1, backoff=0.0)
async def shouts(ctx: legion.Context, n: int) -> None:
    raise ValueError("e" * n + "END")


async def test_a_huge_error_message_is_kept_to_its_start_and_end(tmp_path: Path) -> None:
    """A message of 50 MB was stored whole, twice with its traceback, for every attempt:
    a store of 300-470 MB from one task, and an output line of 52 MB."""
    db = tmp_path / "errors.db"
    async with legion.Runtime(f"sqlite:///{db}", agents=[shouts]) as rt:
        (result,) = [r async for r in rt.map(shouts, [{"n": 5_000_000}])]
        attempts = await rt.store.attempts(result.id)
    assert result.status is TaskStatus.DEAD and result.error is not None
    message, traceback = result.error.message, result.error.traceback
    assert len(message) < MAX_MESSAGE + 100 and len(traceback) < MAX_TRACEBACK + 100
    assert message.startswith("eeee") and message.endswith("eEND")
    assert "characters left out" in message and "characters left out" in traceback
    assert "raise ValueError" in traceback  # (its end, where the line that raised is)
    assert len(attempts) == 2 and all(
        a.error is not None and len(a.error.message) < MAX_MESSAGE + 100 for a in attempts
    )
    assert db.stat().st_size < 5_000_000


class FrameworkGaveUp(Exception):
    """As a framework's error raised from the one that said why."""


@legion.agent(retries=0)
async def gives_up(ctx: legion.Context, how: str) -> None:
    try:
        raise ValueError("1 validation error for Verdict: score must be >= 0")
    except ValueError as exc:
        if how == "from":
            raise FrameworkGaveUp("Exceeded maximum output retries (1)") from exc
        if how == "quoted":
            raise FrameworkGaveUp(f"gave up: {exc}") from exc
        raise FrameworkGaveUp("Exceeded maximum output retries (1)") from None


async def test_an_error_raised_from_another_says_what_caused_it(tmp_path: Path) -> None:
    # "Exceeded maximum output retries (1)" was all the output and the summary said: the
    # validation error that said why was in the traceback alone.
    async with legion.Runtime(f"sqlite:///{tmp_path / 'causes.db'}", agents=[gives_up]) as rt:
        found = {}
        for how in ("from", "quoted", "none"):
            (result,) = [r async for r in rt.map(gives_up, [{"how": how}])]
            assert result.error is not None
            found[how] = result.error.message
    assert found["from"] == (
        "Exceeded maximum output retries (1) "
        "(from ValueError: 1 validation error for Verdict: score must be >= 0)"
    )
    assert found["quoted"] == "gave up: 1 validation error for Verdict: score must be >= 0"
    assert found["none"] == "Exceeded maximum output retries (1)"
