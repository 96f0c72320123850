"""Cron expressions: parsing, next tick, classic day-of-month / day-of-week rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from legion.waiting.cron import Cron, CronError
from legion.waiting.schedules import schedule, tick_key


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


def nxt(expr: str, *parts: int) -> datetime:
    return datetime.fromtimestamp(Cron.parse(expr).next_after(at(*parts)), UTC)


def test_steps_ranges_and_lists() -> None:
    assert nxt("*/15 * * * *", 2026, 1, 1, 10, 7) == datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
    assert nxt("*/15 * * * *", 2026, 1, 1, 10, 15) == datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    assert nxt("5,35 9-10 * * *", 2026, 1, 1, 10, 36) == datetime(2026, 1, 2, 9, 5, tzinfo=UTC)
    assert nxt("0 0 1 1 *", 2026, 3, 1) == datetime(2027, 1, 1, tzinfo=UTC)
    assert nxt("0 0 29 2 *", 2026, 3, 1) == datetime(2028, 2, 29, tzinfo=UTC)  # leap day


def test_weekdays_and_the_either_rule() -> None:
    # 2026-01-02 is a Friday: the next weekday 09:00 is Monday the 5th.
    assert nxt("0 9 * * 1-5", 2026, 1, 2, 10) == datetime(2026, 1, 5, 9, tzinfo=UTC)
    assert nxt("0 0 * * 7", 2026, 1, 1) == datetime(2026, 1, 4, tzinfo=UTC)  # 7 is Sunday
    # Both restricted: the 10th of the month or a Sunday, whichever comes first.
    assert nxt("0 0 10 * 0", 2026, 1, 5) == datetime(2026, 1, 10, tzinfo=UTC)
    assert nxt("0 0 10 * 0", 2026, 1, 1) == datetime(2026, 1, 4, tzinfo=UTC)
    # A field that starts with `*` is not restricted there: Mondays that are odd days
    # (2026-01-05 is a Monday, the 12th is even, the 19th odd).
    assert nxt("0 0 */2 * 1", 2026, 1, 1) == datetime(2026, 1, 5, tzinfo=UTC)
    assert nxt("0 0 */2 * 1", 2026, 1, 6) == datetime(2026, 1, 19, tzinfo=UTC)
    assert nxt("0 0 1 * */7", 2026, 1, 2) == datetime(2026, 2, 1, tzinfo=UTC)  # a Sunday


@pytest.mark.parametrize(
    "expr", ["* * * *", "60 * * * *", "* 24 * * *", "a * * * *", "*/0 * * * *", "5-1 * * * *"]
)
def test_bad_expressions_say_what_is_wrong(expr: str) -> None:
    with pytest.raises(CronError):
        Cron.parse(expr)


def test_a_date_that_never_comes_is_refused() -> None:
    with pytest.raises(CronError, match="never matches"):
        Cron.parse("0 0 31 2 *").next_after(at(2026, 1, 1))


def test_a_new_schedule_starts_at_the_next_tick_and_names_its_ticks() -> None:
    s = schedule("daily", "30 3 * * *", "report", b"{}", at(2026, 1, 1, 12))
    assert s.next_tick == at(2026, 1, 2, 3, 30)
    assert tick_key("daily", s.next_tick) == "schedule:daily:2026-01-02T03:30Z"
    with pytest.raises(ValueError):
        schedule("", "* * * * *", "report", b"{}", 0.0)
