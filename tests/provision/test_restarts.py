"""How soon a supervisor starts another worker after crashes (`legion.provision.restarts`)."""

from __future__ import annotations

from legion.provision.restarts import HEALTHY, LONGEST_PAUSE, Restarts


class Clock:
    now = 1000.0


def test_a_crash_in_a_row_doubles_the_pause_up_to_a_bound() -> None:
    clock = Clock()
    restarts = Restarts(lambda: clock.now)
    pauses = []
    for _ in range(9):
        restarts.started(0)
        clock.now += 0.5  # crashes at once
        pauses.append(restarts.crashed(0))
    assert pauses == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, LONGEST_PAUSE, LONGEST_PAUSE, LONGEST_PAUSE]


def test_a_worker_that_ran_a_while_ends_the_streak_and_slots_are_apart() -> None:
    clock = Clock()
    restarts = Restarts(lambda: clock.now)
    for _ in range(3):
        restarts.started(0)
        restarts.crashed(0)
    restarts.started(1)
    assert restarts.crashed(1) == 0.0  # another slot: its own streak
    restarts.started(0)
    clock.now += HEALTHY
    assert restarts.crashed(0) == 0.0  # ran a minute: a crash of its own, restarted at once


def test_a_fleet_keeps_one_streak_over_its_workers() -> None:
    clock = Clock()
    restarts = Restarts(lambda: clock.now)
    for pid in (11, 12, 13):
        restarts.started(pid)
    assert [restarts.crashed(pid, streak="fleet") for pid in (11, 12, 13)] == [0.0, 1.0, 2.0]


def test_a_worker_that_finished_tasks_ends_the_streak() -> None:
    # A task that brings its worker down (os._exit in an agent) crashed the fleet's workers
    # within seconds, one after another: the pause grew to 30 s with no worker running.
    clock = Clock()
    restarts = Restarts(lambda: clock.now)
    for pid in (21, 22, 23):
        restarts.started(pid)
        clock.now += 5
        restarts.crashed(pid, streak="fleet")
    restarts.started(24)
    clock.now += 5
    assert restarts.crashed(24, streak="fleet", progressed=True) == 0.0
    restarts.started(25)
    clock.now += 5
    assert restarts.crashed(25, streak="fleet") == 1.0  # a new streak, from its first pause
