"""Geometry of the server-rendered charts (inline SVG, no JavaScript, no CDN).

Pure functions: they turn numbers into coordinates and labels; the templates draw the ``<svg>``
and escape every label. The live dashboard chart is drawn by ``static/django_kiq/kiq.js``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 28  # plot margins for axis labels


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Series:
    name: str
    css: str
    points: str
    total: str  # the sum, formatted


@dataclass(frozen=True, slots=True, kw_only=True)
class Hover:
    """An invisible column over one x position whose ``<title>`` is the tooltip."""

    x: float
    width: float
    title: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LineChart:
    width: int
    height: int
    left: int
    right: float
    top: int
    bottom: float
    plot_height: float
    series: tuple[Series, ...]
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    hovers: tuple[Hover, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BarChart:
    width: int
    height: int  # of the bars; ticks are drawn below, within ``full_height``
    full_height: int
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is >= value (at least 4, so the
    four grid lines fall on whole numbers)."""
    if value <= 4:
        return 4
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def compact(n: float) -> str:
    """Axis label: 950, 1.2k, 3M."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= limit:
            return f"{n / limit:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{n:g}"


def line_chart(labels: Sequence[str], series: Sequence[tuple[str, str, Sequence[int]]], *,
               width: int = 960, height: int = 240, x_labels: int = 8) -> LineChart:
    """Lines over shared x ``labels``; ``series`` holds (name, css class, values) triples."""
    right, bottom = width - RIGHT, height - BOTTOM
    top_value = nice_max(max((max(v, default=0) for _, _, v in series), default=0))
    count = len(labels)
    step = (right - LEFT) / max(1, count - 1)

    def x(i: int) -> float:
        return round(LEFT + i * step, 1)

    def y(v: float) -> float:
        return round(bottom - (bottom - TOP) * v / top_value, 1)

    lines = tuple(
        Series(name=name, css=css, total=f"{sum(values):,}",
               points=" ".join(f"{x(i)},{y(v)}" for i, v in enumerate(values)))
        for name, css, values in series)
    y_ticks = tuple(Tick(pos=y(top_value * k / 4), label=compact(top_value * k / 4))
                    for k in range(5))
    every = max(1, math.ceil(count / x_labels))
    x_ticks = tuple(Tick(pos=x(i), label=labels[i]) for i in range(0, count, every))
    hovers = tuple(
        Hover(x=round(x(i) - step / 2, 1), width=round(step, 1),
              title=f"{label}: " + ", ".join(f"{name} {v[i]:,}" for name, _, v in series))
        for i, label in enumerate(labels))
    return LineChart(width=width, height=height, left=LEFT, right=right, top=TOP, bottom=bottom,
                     plot_height=bottom - TOP, series=lines, y_ticks=y_ticks, x_ticks=x_ticks,
                     hovers=hovers)


def bar_chart(counts: Sequence[int], labels: Sequence[str], *, width: int = 260,
              height: int = 40, gap: float = 1.0,
              ticks: Sequence[tuple[int, str]] = ()) -> BarChart:
    """Vertical bars scaled to the largest count; each bar's title is ``label: count``.

    ``ticks`` are (boundary index, label) pairs: boundary i is the left edge of bar i.
    """
    top_value = max(counts, default=0) or 1
    slot = width / max(1, len(counts))
    bars = []
    for i, (count, label) in enumerate(zip(counts, labels)):
        h = round((height - 1) * count / top_value, 1) if count else 0.0
        bars.append(Bar(x=round(i * slot, 1), y=round(height - h, 1), width=round(slot - gap, 1),
                        height=h, title=f"{label}: {count:,}"))
    return BarChart(width=width, height=height, full_height=height + (14 if ticks else 0),
                    bars=tuple(bars),
                    ticks=tuple(Tick(pos=round(i * slot, 1), label=text) for i, text in ticks))


def _ms(ms: int) -> str:
    return f"{ms:g} ms" if ms < 1000 else f"{ms / 1000:g} s"


def bucket_ticks(bounds_ms: Sequence[int], marks_ms: Sequence[int] = (100, 1100, 13000, 150000)
                 ) -> list[tuple[int, str]]:
    """Axis ticks of a duration histogram at some of its bucket bounds."""
    return [(bounds_ms.index(ms) + 1, _ms(ms)) for ms in marks_ms if ms in bounds_ms]


def bucket_labels(bounds_ms: Sequence[int]) -> list[str]:
    """Histogram bucket names from their upper bounds: "< 20 ms" ... "≥ 335 s"."""
    fmt = _ms

    labels = [f"< {fmt(bounds_ms[0])}"]
    labels += [f"{fmt(lo)} – {fmt(hi)}" for lo, hi in zip(bounds_ms, bounds_ms[1:])]
    labels.append(f"≥ {fmt(bounds_ms[-1])}")
    return labels
