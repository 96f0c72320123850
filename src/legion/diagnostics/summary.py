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
        text = self.example.message
        if self.count > 1:
            extra = f"{self.count} times"
            if self.example.kind in (Kind.BLOCKED_LOOP, Kind.SEQUENTIAL_AWAIT):
                verb = "blocked" if self.example.kind is Kind.BLOCKED_LOOP else "could save"
                extra += f"; {verb} {self.total_seconds * 1000:.0f} ms in all"
            text += f" [{extra}]"
        return text


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
