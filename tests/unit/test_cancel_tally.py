"""What `legion cancel` says of each task it was given, by how it was given them."""

from __future__ import annotations

import pytest

from legion.cli.status import CancelTally
from legion.task import TaskStatus


def test_a_task_named_by_id_that_had_ended_is_a_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    tally = CancelTally(by_tenant=False)
    tally.each(1, TaskStatus.CANCELLED, None)
    tally.each(2, TaskStatus.SUCCEEDED, None)
    tally.each(3, None, None)
    assert capsys.readouterr().out.splitlines() == ["1\tcancelled", "2\tsucceeded", "3\tnot found"]
    assert tally.refused == [
        "task 2 succeeded; only queued, waiting or running tasks can be cancelled",
        "task 3 not found",
    ]
    assert tally.notes() == []


def test_a_tenants_task_that_ended_since_it_was_listed_is_counted_not_refused() -> None:
    # `cancel --tenant` lists the tenant's unfinished tasks, then cancels them a thousand at
    # a time while workers run on: 3,207 that ended meanwhile were each an error, exit 1.
    tally = CancelTally(by_tenant=True)
    for i, status in enumerate([TaskStatus.SUCCEEDED, TaskStatus.DEAD, TaskStatus.SUCCEEDED]):
        tally.each(i, status, None)
    assert tally.refused == []
    assert tally.notes() == [
        "ended on their own before the cancel reached them: 2 succeeded, 1 dead"
    ]


def test_many_running_tasks_are_named_ten_at_most() -> None:
    tally = CancelTally(by_tenant=True)
    for i in range(9141):
        tally.each(i, TaskStatus.RUNNING, None)
    (note,) = tally.notes()
    assert note.startswith("cancel requested for running task 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 and")
    assert "and 9,131 more: they stop when their workers next check in" in note
    one = CancelTally(by_tenant=False)
    one.each(5, TaskStatus.RUNNING, None)
    assert one.notes() == [
        "cancel requested for running task 5: it stops when its worker next checks in "
        "(`legion status` shows it)"
    ]


def test_a_descendant_that_ended_meanwhile_is_no_refusal() -> None:
    tally = CancelTally(by_tenant=False)
    tally.each(7, TaskStatus.SUCCEEDED, 1)
    assert tally.refused == [] and tally.notes() == []
