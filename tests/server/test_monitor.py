"""The monitor: what one sample reads from the store and how the numbers add up."""

from __future__ import annotations

import asyncio
import time

from legion.server.monitor import Pacing, next_pause, quantiles
from legion.store.types import WriteBatch
from legion.task import Completion, ErrorInfo, NewTask, Outcome
from tests.server.conftest import Api


def test_quantiles_are_nearest_rank() -> None:
    assert quantiles([], (0.5, 0.95)) == [None, None]
    assert quantiles([3.0], (0.5, 0.99)) == [3.0, 3.0]
    values = [float(i) for i in range(101)]
    assert quantiles(values, (0.0, 0.5, 0.95, 1.0)) == [0.0, 50.0, 95.0, 100.0]


def test_a_failed_sample_is_tried_again_after_the_interval() -> None:
    # A sample failing after a 10 s call timeout waited 190 s for the next: /healthz
    # stayed red minutes after the store came back.
    assert next_pause(1.0, 10.0, ok=False) == 1.0
    assert next_pause(1.0, 0.01, ok=True) == 0.99  # the rest of the interval
    assert next_pause(1.0, 0.1, ok=True) == 1.9  # at least 20 times what a sample costs...
    assert next_pause(1.0, 10.0, ok=True) == 30.0  # ...but never more than 30 s


def test_one_sample_that_waited_does_not_stretch_the_pause() -> None:
    # A sample that waited 34 s on a SQLite lock paused the next for 30 s: the dashboard
    # showed numbers 30 s old, "live", after the store was free.
    pacing = Pacing(1.0)
    assert [pacing.after(0.01, ok=True) for _ in range(3)] == [0.99] * 3
    assert pacing.after(34.4, ok=True) == 0.99  # waited: its cost is the least recent one
    assert pacing.after(0.01, ok=False) == 1.0
    slow = [pacing.after(0.5, ok=True) for _ in range(5)]
    assert slow[-1] == 9.5  # a store slow sample after sample: watching takes less of it


async def test_a_sample_counts_retries_outcomes_and_latency(api: Api) -> None:
    monitor = api.server.state.monitor
    before = monitor.snapshot.totals
    _, sub = await api.call(
        "POST",
        "/v1/tasks:batch",
        body={
            "tasks": [{"agent": "flaky", "input": {"n": 1}}, {"agent": "work", "input": {"n": 2}}]
        },
    )
    for t in sub["tasks"]:
        await api.runtime.result(t["id"])
    snapshot = await monitor.sample()
    totals = snapshot.totals
    assert totals.finished - before.finished == 2
    assert totals.succeeded - before.succeeded == 2
    assert totals.retries - before.retries == 1
    history = monitor.history()
    assert history[-1] == snapshot.point
    assert any(p.p50 is not None for p in history)
    assert snapshot.statuses["succeeded"] == 2 and snapshot.statuses["queued"] == 0


async def test_waiters_wake_on_the_next_sample_and_on_close(api: Api) -> None:
    monitor = api.server.state.monitor
    before = monitor.snapshot.at
    assert (await monitor.next_snapshot()).at > before
    waiting = asyncio.ensure_future(monitor.next_snapshot())
    monitor.close()
    await waiting
    assert monitor.closed


async def test_a_failure_shown_goes_away_when_its_task_later_succeeds(api: Api) -> None:
    store, monitor = api.runtime.store, api.server.state.monitor
    # A task of an agent no worker here runs: this test moves it by hand.
    (sub,) = await store.submit([NewTask("elsewhere", b"{}")], time.time())

    async def attempt(outcome: Outcome, **fields: object) -> None:
        (lease,) = await store.lease("w", {"elsewhere": 1}, 1, time.time() + 30, time.time())
        done = Completion(sub.id, lease.attempt, "w", outcome, finished_at=time.time(), **fields)  # type: ignore[arg-type]
        assert await store.write(WriteBatch(completions=[done]), time.time()) == [True]

    async def shown() -> set[int]:
        # Failures are read again at most every two intervals, and only when something
        # changed: sample until they were (a monitor that never reads them again fails).
        read_at = monitor._failures_read_at
        async with asyncio.timeout(10):
            while True:
                snapshot = await monitor.sample()
                if monitor._failures_read_at != read_at:
                    return {f.id for f in snapshot.failures}

    await attempt(Outcome.RETRY, error=ErrorInfo("ConnectionError", "flaky"))
    assert sub.id in await shown()
    await attempt(Outcome.SUCCEEDED, output=b"1")
    assert sub.id not in await shown()
