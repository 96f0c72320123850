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
