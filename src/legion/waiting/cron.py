"""Cron expressions: five fields (minute hour day-of-month month day-of-week), in UTC.

Each field takes ``*``, numbers, ranges ``a-b``, lists ``a,b`` and steps ``*/n`` or
``a-b/n``; day of week counts 0 (or 7) as Sunday. As in classic cron, when both the day of
month and the day of week are restricted, a day matching either runs; a field that starts
with ``*`` (``*/2``) is not restricted there: ``0 0 */2 * 1`` runs on Mondays that are odd
days. Names (``MON``, ``JAN``) and macros (``@daily``) are not taken: write the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("weekday", 0, 7))


class CronError(ValueError):
    """Raised for a cron expression that cannot be read."""


@dataclass(frozen=True, slots=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        parts = text.split()
        if len(parts) != 5:
            raise CronError(
                f"a cron expression has 5 fields (minute hour day month weekday), not "
                f"{len(parts)}: {text!r}"
            )
        sets = [_field(p, name, lo, hi) for p, (name, lo, hi) in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(0 if d == 7 else d for d in sets[4])
        return cls(
            sets[0],
            sets[1],
            sets[2],
            sets[3],
            weekdays,
            parts[2].startswith("*"),
            parts[4].startswith("*"),
        )

    def _day_matches(self, d: datetime) -> bool:
        in_month = d.day in self.days
        in_week = (d.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:  # (`*` alone holds every day: no bound)
            return in_month and in_week
        return in_month or in_week

    def next_after(self, when: float) -> float:
        """The first tick strictly after ``when`` (seconds since the epoch)."""
        t = datetime.fromtimestamp(when, UTC).replace(second=0, microsecond=0)
        t += timedelta(minutes=1)
        limit = t + timedelta(days=366 * 5)
        while t < limit:
            if t.month not in self.months:
                year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
                t = t.replace(year=year, month=month, day=1, hour=0, minute=0)
                continue
            if not self._day_matches(t):
                t = (t + timedelta(days=1)).replace(hour=0, minute=0)
                continue
            if t.hour not in self.hours:
                t = (t + timedelta(hours=1)).replace(minute=0)
                continue
            if t.minute not in self.minutes:
                t += timedelta(minutes=1)
                continue
            return t.timestamp()
        raise CronError("the cron expression never matches a real date")


def _field(text: str, name: str, lo: int, hi: int) -> frozenset[int]:
    out: set[int] = set()
    for item in text.split(","):
        rng, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if rng == "*":
                a, b = lo, hi
            elif "-" in rng:
                a_text, b_text = rng.split("-", 1)
                a, b = int(a_text), int(b_text)
            else:
                a = b = int(rng)
                if step_text:
                    b = hi
        except ValueError:
            raise CronError(f"cannot read the {name} field {text!r}") from None
        if step < 1:
            raise CronError(f"the {name} field {text!r} has a step of {step}; a step is >= 1")
        if a > b and lo <= a <= hi and lo <= b <= hi:
            raise CronError(f"the {name} field {text!r} has a range that ends before it starts")
        if not (lo <= a <= hi and lo <= b <= hi):
            raise CronError(f"the {name} field {text!r} is out of range {lo}-{hi}")
        out.update(range(a, b + 1, step))
    return frozenset(out)
