"""Small inline-SVG line charts for the demo's HTML report: no plotting library, no
network, nothing to install."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 720, 320
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 36, 44
COLORS = ("#c0392b", "#2471a3", "#7d3c98", "#239b56")


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str
    step: bool = False
    """Draw as a staircase (a count that jumps at each x)."""
    dashed: bool = False


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}"


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    hline: tuple[float, str] | None = None,
    log_x: bool = False,
) -> str:
    """An SVG chart of ``series`` (with an optional labelled horizontal line)."""
    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys, strict=True)]
    if log_x:
        points = [(x, y) for x, y in points if x > 0]
    xs = [math.log10(x) if log_x else x for x, _ in points] or [0.0, 1.0]
    ys = [y for _, y in points] + ([hline[0]] if hline else []) or [0.0, 1.0]
    x_lo, x_hi = (min(xs), max(xs)) if log_x else (0.0, max(xs))
    y_lo, y_hi = 0.0, max(ys) * 1.08 or 1.0
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def px(x: float) -> float:
        v = math.log10(x) if log_x else x
        return _LEFT + (v - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return _TOP + plot_h - (y - y_lo) / (y_hi - y_lo) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#999"/>',
    ]
    for tick in _ticks(y_lo, y_hi):
        y = py(tick)
        out.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>'
        )
    x_ticks = (
        [
            m * 10.0**e
            for e in range(math.floor(x_lo), math.ceil(x_hi) + 1)
            for m in (1, 2, 5)
            if x_lo <= math.log10(m * 10.0**e) <= x_hi
        ]
        if log_x
        else _ticks(x_lo, x_hi)
    )
    for tick in x_ticks:
        x = px(tick)
        if _LEFT - 1 <= x <= _LEFT + plot_w + 1:
            out.append(
                f'<text x="{x:.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle">'
                f"{_fmt(tick)}</text>"
            )
    out.append(
        f'<text x="{_LEFT + plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle">'
        f"{escape(xlabel)}</text>"
        f'<text x="14" y="{_TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {_TOP + plot_h / 2})">{escape(ylabel)}</text>'
    )
    if hline is not None:
        y = py(hline[0])
        out.append(
            f'<line x1="{_LEFT}" x2="{_LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#555" stroke-dasharray="6 4"/>'
            f'<text x="{_LEFT + plot_w - 4}" y="{y - 5:.1f}" text-anchor="end" fill="#555">'
            f"{escape(hline[1])}</text>"
        )
    for i, s in enumerate(series):
        coords: list[str] = []
        previous: float | None = None
        for x, y in zip(s.xs, s.ys, strict=True):
            if log_x and x <= 0:
                continue
            if s.step and previous is not None:
                coords.append(f"{px(x):.1f},{py(previous):.1f}")
            coords.append(f"{px(x):.1f},{py(y):.1f}")
            previous = y
        dash = ' stroke-dasharray="4 3"' if s.dashed else ""
        out.append(
            f'<polyline fill="none" stroke="{s.color}" stroke-width="2"{dash} '
            f'points="{" ".join(coords)}"/>'
        )
        ly = _TOP + 14 + 16 * i
        out.append(
            f'<line x1="{_LEFT + 10}" x2="{_LEFT + 30}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{s.color}" stroke-width="2"{dash}/>'
            f'<text x="{_LEFT + 36}" y="{ly}">{escape(s.label)}</text>'
        )
    out.append("</svg>")
    return "".join(out)
