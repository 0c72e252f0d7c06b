"""Server-rendered SVG charts: stacked bars, lines and bars on a time axis.

No JavaScript and no style attributes (the CSP blocks them): colours come from classes
styled in app.css (``.chart .s-<state>`` and friends), sizes from SVG attributes. Each
chart has a title, axes with labels, and a text summary (its ``<desc>``, and beside the
chart for everyone) so it says the same to a screen reader. Times are UTC.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH = 720
HEIGHT = 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 30, 30

_chart_ids = iter(range(1, 10**9))


@dataclass(frozen=True)
class Stack:
    """One layer of a stacked bar chart (or one line of a line chart)."""

    label: str
    css: str
    values: Sequence[float | None]


@dataclass(frozen=True)
class Span:
    """A bar on a time axis: a run from start to end, or a fire (start == end)."""

    start: datetime
    end: datetime
    css: str
    title: str
    href: str | None = None


@dataclass(frozen=True)
class Lane:
    label: str
    spans: Sequence[Span]
    href: str | None = None


def stacked_bars(
    title: str, starts: Sequence[datetime], step: timedelta, stacks: Sequence[Stack],
    summary: str, unit: str = "runs",
) -> SafeString:  # fmt: skip
    """Bars per time bin (``starts``, each ``step`` long), the stacks on top of each other."""
    totals = [sum(s.values[i] or 0 for s in stacks) for i in range(len(starts))]
    top = max(_nice_max(max(totals, default=0)), 2.0)  # whole runs on the axis
    x0, x1 = LEFT, WIDTH - RIGHT
    y0, y1 = HEIGHT - BOTTOM, TOP
    span_start, span_end = starts[0], starts[-1] + step
    out = _open(title, summary)
    out += _y_axis(top, lambda v: f"{v:g}", unit)
    out += _time_axis(span_start, span_end)
    slot = (x1 - x0) / max(len(starts), 1)
    gap = 1 if slot > 3 else 0
    for i, when in enumerate(starts):
        base = 0.0
        for stack in stacks:
            value = stack.values[i] or 0
            if value <= 0:
                continue
            y_low = y0 - (y0 - y1) * base / top
            y_high = y0 - (y0 - y1) * (base + value) / top
            base += value
            tip = f"{_when(when)}: {value:g} {stack.label}"
            out.append(
                f'<rect class="{escape(stack.css)}" x="{x0 + i * slot + gap / 2:.1f}" '
                f'y="{y_high:.1f}" width="{max(slot - gap, 0.5):.1f}" '
                f'height="{max(y_low - y_high, 0.5):.1f}"><title>{escape(tip)}</title></rect>'
            )
    out += _legend(stacks)
    return _close(out)


def line_chart(
    title: str, starts: Sequence[datetime], step: timedelta, lines: Sequence[Stack],
    summary: str, fmt: Callable[[float], str], unit: str = "", top: float | None = None,
    floor: float = 1.0,
) -> SafeString:  # fmt: skip
    """Lines through each bin's middle; a bin without a value breaks the line (and a
    lone value shows as a dot)."""
    values = [v for line in lines for v in line.values if v is not None]
    top = top if top is not None else max(_nice_max(max(values, default=0)), floor)
    x0, x1 = LEFT, WIDTH - RIGHT
    y0, y1 = HEIGHT - BOTTOM, TOP
    out = _open(title, summary)
    out += _y_axis(top, fmt, unit)
    out += _time_axis(starts[0], starts[-1] + step)
    slot = (x1 - x0) / max(len(starts), 1)
    for line in lines:
        points: list[tuple[float, float]] = []
        runs: list[list[tuple[float, float]]] = [points]
        for i, value in enumerate(line.values):
            if value is None:
                points = []
                runs.append(points)
                continue
            x = x0 + (i + 0.5) * slot
            y = y0 - (y0 - y1) * min(value, top) / top if top else y0
            points.append((x, y))
            tip = f"{_when(starts[i])}: {line.label} {fmt(value)}"
            out.append(
                f'<circle class="{escape(line.css)}" cx="{x:.1f}" cy="{y:.1f}" r="2.5">'
                f"<title>{escape(tip)}</title></circle>"
            )
        for run in runs:
            if len(run) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in run)
                out.append(f'<polyline class="{escape(line.css)} line" points="{path}"/>')
    out += _legend(lines)
    return _close(out)


LANE_HEIGHT = 22
#: Lanes are short and wide: a wider drawing keeps their text small when scaled to a page.
LANES_WIDTH = 1100


def time_lanes(
    title: str, lanes: Sequence[Lane], start: datetime, end: datetime, summary: str,
    label_width: int = 160,
) -> SafeString:  # fmt: skip
    """One lane per row (a job), its spans as bars (runs) or ticks (fires) on one time
    axis from ``start`` to ``end``; a span with a link is clickable."""
    height = TOP + LANE_HEIGHT * max(len(lanes), 1) + BOTTOM
    width = LANES_WIDTH
    x0, x1 = label_width, width - RIGHT
    seconds = max((end - start).total_seconds(), 1)

    def x_of(when: datetime) -> float:
        offset = (when - start).total_seconds() / seconds
        return x0 + (x1 - x0) * min(max(offset, 0.0), 1.0)

    out = _open(title, summary, height, width, css="chart lanes")
    out += _time_axis(start, end, left=x0, bottom=height - BOTTOM, top=TOP, width=width)
    for row, lane in enumerate(lanes):
        y = TOP + row * LANE_HEIGHT
        label = lane.label if len(lane.label) <= 24 else lane.label[:23] + "…"
        text = f'<text class="lane-label" x="{x0 - 6}" y="{y + 15}" text-anchor="end">'
        text += f"{escape(label)}</text>"
        if lane.href:
            text = f'<a href="{escape(lane.href)}">{text}</a>'
        out.append(f'<line class="lane" x1="{x0}" x2="{x1}" y1="{y + 11}" y2="{y + 11}"/>')
        out.append(text)
        for span in lane.spans:
            left = x_of(span.start)
            width = max(x_of(span.end) - left, 2.0)
            bar = (
                f'<rect class="{escape(span.css)}" x="{left:.1f}" y="{y + 4}" '
                f'width="{width:.1f}" height="{LANE_HEIGHT - 8}">'
                f"<title>{escape(span.title)}</title></rect>"
            )
            if span.href:
                bar = f'<a href="{escape(span.href)}">{bar}</a>'
            out.append(bar)
    return _close(out)


# --- pieces -------------------------------------------------------------------------


def _open(
    title: str, summary: str, height: int = HEIGHT, width: int = WIDTH, css: str = "chart"
) -> list[str]:
    n = next(_chart_ids)
    return [
        f'<svg class="{css}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-labelledby="chart_{n}_title chart_{n}_desc" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart_{n}_title">{escape(title)}</title>',
        f'<desc id="chart_{n}_desc">{escape(summary)}</desc>',
        f'<text class="chart-title" x="{LEFT}" y="16">{escape(title)}</text>',
    ]


def _close(out: list[str]) -> SafeString:
    out.append("</svg>")
    return mark_safe("\n".join(out))  # noqa: S308 - every text above went through escape()


def _y_axis(top: float, fmt: Callable[[float], str], unit: str) -> list[str]:
    x0, x1 = LEFT, WIDTH - RIGHT
    y0, y1 = HEIGHT - BOTTOM, TOP
    out = [f'<line class="axis" x1="{x0}" x2="{x0}" y1="{y1}" y2="{y0}"/>']
    for fraction in (0, 0.5, 1):
        y = y0 - (y0 - y1) * fraction
        out.append(f'<line class="grid" x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(
            f'<text class="tick" x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(fmt(top * fraction))}</text>"
        )
    if unit:
        out.append(
            f'<text class="tick unit" x="{x0 - 4}" y="{y1 - 6}" text-anchor="end">'
            f"{escape(unit)}</text>"
        )
    return out


TICK_STEPS = [timedelta(hours=h) for h in (1, 2, 3, 6, 12, 24, 48)]


def _time_axis(
    start: datetime, end: datetime, left: int = LEFT, bottom: int = HEIGHT - BOTTOM,
    top: int = TOP, width: int = WIDTH,
) -> list[str]:  # fmt: skip
    x0, x1 = left, width - RIGHT
    seconds = max((end - start).total_seconds(), 1)
    out = [f'<line class="axis" x1="{x0}" x2="{x1}" y1="{bottom}" y2="{bottom}"/>']
    # About six labels, on round hours (UTC).
    step = next((s for s in TICK_STEPS if seconds / s.total_seconds() <= 8), TICK_STEPS[-1])
    hours = int(step.total_seconds() // 3600)
    tick = start.replace(minute=0, second=0, microsecond=0)
    if tick < start:
        tick += timedelta(hours=1)
    while tick.hour % min(hours, 24):
        tick += timedelta(hours=1)
    label = "%a %d" if step >= timedelta(days=1) else "%H:%M"
    while tick <= end:
        x = x0 + (x1 - x0) * (tick - start).total_seconds() / seconds
        out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}"/>')
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">'
            f"{tick.strftime(label)}</text>"
        )
        tick += step
    out.append(f'<text class="tick unit" x="{x1}" y="{bottom + 26}" text-anchor="end">UTC</text>')
    return out


def _legend(stacks: Sequence[Stack]) -> list[str]:
    out, x = [], WIDTH - RIGHT
    # Right-aligned, last first, so the legend ends at the chart's right edge.
    for stack in reversed(stacks):
        width = 18 + 7 * len(stack.label)
        x -= width
        out.append(f'<rect class="{escape(stack.css)}" x="{x}" y="7" width="10" height="10"/>')
        out.append(f'<text class="legend" x="{x + 14}" y="16">{escape(stack.label)}</text>')
    return out


def _nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at least ``value`` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for factor in (1, 2, 5, 10):
        if value <= factor * power:
            return float(factor * power)
    return float(10 * power)


def _when(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")
