"""Small line charts as SVG text: what the view under a training cell draws while the cell runs, when every
millisecond of CPU is the training's (a bokeh document costs tens of milliseconds to build and to patch). Plain
data in, a string out; names reach it only as escaped text."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .html import escape

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD = 420, 150, 46, 22, 8


@dataclass(frozen=True)
class Line:
    "One series: its points, legend label, colour, and whether it is drawn faint (raw values) or as dots."
    xs: list
    ys: list
    label: str
    color: str
    faint: bool = False
    dots: bool = False


def _finite(xs, ys) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]


def _number(value: float) -> str:
    return f'{value:.3g}' if value == 0 or 1e-3 <= abs(value) < 1e4 else f'{value:.1e}'


def line_chart(title: str, lines: list[Line], x_label: str, shaded: list[tuple[float, float, str]] = ()) -> str:
    """An SVG chart of `lines` (their finite points), with `shaded` x ranges `(start, end, colour)` under them,
    its y range's ends and its x range's ends written on the axes. Empty series draw an empty chart."""
    points = [p for line in lines for p in _finite(line.xs, line.ys)]
    x0, x1 = (min(p[0] for p in points), max(p[0] for p in points)) if points else (0.0, 1.0)
    y0, y1 = (min(p[1] for p in points), max(p[1] for p in points)) if points else (0.0, 1.0)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + abs(y0) * 0.1 + 1e-9)
    width, height = WIDTH - PAD_LEFT - PAD, HEIGHT - PAD_BOTTOM - PAD

    def left(x: float) -> float: return PAD_LEFT + (x - x0) / (x1 - x0) * width
    def top(y: float) -> float: return PAD + (1 - (y - y0) / (y1 - y0)) * height
    parts = [f"<svg class='fw-svg' viewBox='0 0 {WIDTH} {HEIGHT}' role='img' aria-label='{escape(title)}'>",
             f"<text x='{PAD_LEFT}' y='{PAD - 1}' class='fw-svg-title'>{escape(title)}</text>"]
    for start, end, color in shaded:
        a, b = left(max(x0, start)), left(min(x1, end))
        if b > a: parts.append(f"<rect x='{a:.1f}' y='{PAD}' width='{b - a:.1f}' height='{height}' fill='{color}' "
                               "opacity='0.35'/>")
    parts.append(f"<path d='M{PAD_LEFT},{PAD}V{PAD + height}H{PAD_LEFT + width}' class='fw-svg-axis'/>")
    for line in lines:
        found = _finite(line.xs, line.ys)
        if line.dots:
            parts += [f"<circle cx='{left(x):.1f}' cy='{top(y):.1f}' r='3' fill='{line.color}'/>" for x, y in found]
        elif found:
            points = ' '.join(f'{left(x):.1f},{top(y):.1f}' for x, y in found)
            parts.append(f"<polyline class='fw-svg-line' data-series='{escape(line.label)}' fill='none' "
                         f"stroke='{line.color}' stroke-width='{1 if line.faint else 2}' "
                         f"opacity='{0.3 if line.faint else 1}' points='{points}'/>")
    parts += [f"<text x='{PAD_LEFT - 4}' y='{PAD + 8}' class='fw-svg-tick' text-anchor='end'>{_number(y1)}</text>",
              f"<text x='{PAD_LEFT - 4}' y='{PAD + height}' class='fw-svg-tick' text-anchor='end'>{_number(y0)}</text>",
              f"<text x='{PAD_LEFT}' y='{HEIGHT - 6}' class='fw-svg-tick'>{_number(x0)}</text>",
              f"<text x='{PAD_LEFT + width}' y='{HEIGHT - 6}' class='fw-svg-tick' text-anchor='end'>{_number(x1)} "
              f'{escape(x_label)}</text>']
    legend_x = PAD_LEFT + width
    for line in reversed([line for line in lines if not line.faint]):
        parts.append(f"<text x='{legend_x}' y='{PAD + 10}' class='fw-svg-tick' text-anchor='end' "
                     f"fill='{line.color}'>{escape(line.label)}</text>")
        legend_x -= 8 + 6 * len(line.label)
    return ''.join(parts) + '</svg>'
