"""A small line chart drawn as SVG on the server: no JavaScript library, no CDN, and it shows with JavaScript off.

The page's refresh swaps the whole ``<main>``, chart included, so "live" needs nothing more here. Every label
is escaped (``markupsafe``), though all of them are numbers and names chosen by this module or the app.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from markupsafe import Markup, escape

WIDTH, HEIGHT = 560, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 24, 22


@attrs.frozen
class Series:
    name: str
    css: str  # the class that colours it (dashboard.css)
    values: Sequence[float | None]  # one per minute, oldest first; None where nothing was recorded


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    step = float(10 ** len(str(int(value)))) / 10
    for factor in (1, 2, 2.5, 5, 10):
        if value <= step * factor:
            return step * factor
    return value


def line_chart(title: str, series: Sequence[Series], minutes: int, chart_id: str) -> Markup:
    """An SVG of ``series`` over the last ``minutes`` minutes (x: minutes ago; y: from 0 to a round maximum)."""
    top = _nice_max(max((v for s in series for v in s.values if v is not None), default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(index: int) -> float:
        return LEFT + (plot_w * index / max(minutes - 1, 1))

    def y(value: float) -> float:
        return TOP + plot_h - plot_h * value / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{escape(chart_id)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
        f'<text class="chart-title" x="{LEFT}" y="14">{escape(title)}</text>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        gy = y(top * fraction)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{gy:.1f}" y2="{gy:.1f}"/>')
        label = f"{top * fraction:g}"
        parts.append(f'<text class="axis" x="{LEFT - 4}" y="{gy + 4:.1f}" text-anchor="end">{escape(label)}</text>')
    for index, label in ((0, f"-{minutes} min"), (minutes // 2, f"-{minutes - minutes // 2} min"),
                         (minutes - 1, "now")):
        parts.append(f'<text class="axis" x="{x(index):.1f}" y="{HEIGHT - 6}" text-anchor="middle">'
                     f'{escape(label)}</text>')
    legend_x = WIDTH - RIGHT - 80 * len(series)  # right-aligned, clear of the title
    for number, line in enumerate(series):
        points = [(x(i), y(v)) for i, v in enumerate(line.values) if v is not None]
        drawn = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        total = sum(v for v in line.values if v is not None)
        parts.append(f'<polyline class="series {escape(line.css)}" data-series="{escape(line.name)}" '
                     f'data-points="{len(points)}" data-total="{total:g}" points="{drawn}">'
                     f'<title>{escape(line.name)}: {total:g} in {minutes} min</title></polyline>')
        lx = legend_x + number * 80
        parts.append(f'<rect class="swatch {escape(line.css)}" x="{lx}" y="6" width="10" height="10"/>')
        parts.append(f'<text class="legend" x="{lx + 14}" y="15">{escape(line.name)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


@attrs.frozen
class History:
    """Per minute over the last hour, oldest first: tasks done and failed (summed over queues), and the
    pending and eta depths the workers sampled (None for a minute with no sample)."""

    minutes: int
    done: Sequence[float | None]
    failed: Sequence[float | None]
    pending: Sequence[float | None]
    eta: Sequence[float | None]


def throughput_chart(history: History) -> Markup:
    """The overview's two charts: throughput, and queue depths."""
    rate = line_chart("Tasks per minute", [Series("done", "done", history.done),
                                           Series("failed", "failed", history.failed)],
                      history.minutes, "chart-throughput")
    depth = line_chart("Queue depth (all queues)", [Series("pending", "pending", history.pending),
                                                    Series("eta", "eta", history.eta)],
                       history.minutes, "chart-depth")
    return Markup(rate + depth)
