"""`legion run`'s summary counts a task as finished in an earlier run only if its last
attempt began before this run did: a task `legion retry` queued again ran in this run,
even when the local worker ended it before the chunk of lines naming it was submitted
(the summary said "finished in an earlier run and were not run again", and to retry it)."""

from __future__ import annotations

from legion.cli.run import Resumed
from legion.task import TaskResult, TaskStatus

BEGAN = 1_000.0


def ended(task_id: int, started_at: float | None) -> TaskResult:
    return TaskResult(task_id, None, TaskStatus.SUCCEEDED, started_at=started_at)


def test_a_task_ended_when_submitted_again_is_earlier_unless_it_began_since() -> None:
    resumed = Resumed({1, 2, 3}, BEGAN)
    assert resumed(ended(1, BEGAN - 60))  # finished in an earlier run
    assert not resumed(ended(2, BEGAN + 0.5))  # retried, and ran now before its chunk
    assert resumed(ended(3, None))  # (cancelled before it ever started)
    assert not resumed(ended(4, BEGAN - 60))  # not ended when submitted: ran now
