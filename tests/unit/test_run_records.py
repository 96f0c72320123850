"""The lines ``legion run`` writes: every ended task that did not succeed has an error
with a type and a message, even one that ended without an error of its own."""

from __future__ import annotations

from legion.cli.run import LineResult, output_record
from legion.inputs import InputLine
from legion.task import ErrorInfo, TaskResult, TaskStatus


def test_a_cancelled_task_says_so_in_its_error() -> None:
    line = InputLine(3, "k3", b'{"n": 1}')
    record = output_record(LineResult(line, TaskResult(7, "k3", TaskStatus.CANCELLED)))
    assert record == {
        "line": 3,
        "key": "k3",
        "id": 7,
        "status": "cancelled",
        "attempts": 0,
        "error": {"type": "Cancelled", "message": "cancelled before it finished"},
    }


def test_a_failed_task_keeps_its_own_error() -> None:
    line = InputLine(1, None, b'{"n": 1}')
    error = ErrorInfo("ValueError", "bad n")
    result = TaskResult(2, None, TaskStatus.DEAD, error=error, attempt=3)
    record = output_record(LineResult(line, result))
    assert record["error"] == error.brief() and record["status"] == "dead"


def test_a_line_whose_task_is_gone_says_why_and_counts_as_not_succeeded() -> None:
    # A task purged before the run read its end: the line said only "unknown", and the
    # run exited 0 with it unfinished.
    from legion.cli.progress import RunTally

    record = output_record(LineResult(InputLine(2, "k2", b'{"n": 1}'), None))
    assert record["status"] == "unknown" and record["error"]["type"] == "NotFound"
    assert "purged" in record["error"]["message"]
    tally = RunTally(total=2)
    tally.add(TaskResult(1, "k1", TaskStatus.SUCCEEDED))
    tally.gone += 1
    assert (tally.done, tally.not_succeeded) == (2, 1)
