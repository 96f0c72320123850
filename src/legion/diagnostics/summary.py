"""Findings of many tasks, grouped by kind and place: what a run summary shows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from legion.diagnostics.report import Diagnostic, Kind


@dataclass(frozen=True, slots=True)
class Group:
    example: Diagnostic  # the one with the largest duration
    count: int
    total_seconds: float

    def line(self) -> str:
        """The example's message (the costliest of the group), with how often and how
        much in all, and on average, when there are several."""
        text = self.example.message
        if self.count > 1:
            extra = f"{self.count} times"
            if self.example.kind in (Kind.BLOCKED_LOOP, Kind.SEQUENTIAL_AWAIT):
                verb = "blocked" if self.example.kind is Kind.BLOCKED_LOOP else "could save"
                extra += (
                    f"; {verb} {self.total_seconds * 1000:.0f} ms in all, "
                    f"{self.total_seconds / self.count * 1000:.0f} ms on average"
                )
            text += f" [{extra}]"
        return text


OVERLAP_NOTE = (
    "findings of sequential steps that share a line overlap: gathering one pair of a chain "
    "removes the others' waits too, so their savings do not add up"
)


def overlapping(groups: Iterable[Group]) -> bool:
    """Whether two of the "could be gathered" groups share a line (steps A, B, C one
    after the other: A and B, then B and C): a user reading their savings as a sum, twice
    what one gather saves, would expect what no rewrite gives."""
    seen: set[tuple[str, int]] = set()
    for g in groups:
        if g.example.kind is not Kind.SEQUENTIAL_AWAIT:
            continue
        sites = {(s.file, s.line) for s in g.example.stack}
        if sites & seen:
            return True
        seen |= sites
    return False


def summarize(found: Iterable[Diagnostic]) -> list[Group]:
    """Groups of like findings (same kind, same place), the most costly first."""
    groups: dict[tuple[Kind, str, int], list[Diagnostic]] = {}
    for d in found:
        key = (d.kind, d.site.file if d.site else "", d.site.line if d.site else 0)
        groups.setdefault(key, []).append(d)
    out = [
        Group(
            max(ds, key=lambda d: d.seconds or 0.0),
            len(ds),
            sum(d.seconds or 0.0 for d in ds),
        )
        for ds in groups.values()
    ]
    return sorted(out, key=lambda g: (-g.total_seconds, -g.count))
