"""Charts as inline SVG strings: horizontal bars, columns (linear or log scale), a line.

Plain SVG written by hand: no dependency, nothing fetched when the page opens, text that
stays text (searchable, selectable, printable), and a ``viewBox`` so each chart scales to the
width of the page or the printed A4 column. Every label goes through ``esc``: ids are user
data, and an id holding markup must show as text.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

WIDTH = 720
_FONT = 12
_LABEL_CHARS = 44


def esc(value: object) -> str:
    """Text for HTML or SVG content and attribute values: ``& < > " '`` escaped."""
    return html.escape(str(value), quote=True)


def number(n: float) -> str:
    """A count with thousands separators."""
    return f"{n:,.0f}"


def _short(text: str, chars: int = _LABEL_CHARS) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"


def _svg(height: float, body: str, title: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {height:.0f}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" preserveAspectRatio="xMinYMin meet">'
        f"<title>{esc(title)}</title>{body}</svg>"
    )


def hbars(items: Sequence[tuple[str, float, str]], *, title: str, label_w: int = 300) -> str:
    """One horizontal bar per (label, value, note), largest scale first; notes right of bars."""
    row_h, top = 22, 4
    most = max((v for _, v, _ in items), default=0) or 1
    bar_w = WIDTH - label_w - 150
    parts = []
    for i, (label, value, note) in enumerate(items):
        y = top + i * row_h
        w = max(1.0, bar_w * value / most) if value else 0.0
        parts.append(
            f'<g class="bar"><title>{esc(label)}: {esc(note or number(value))}</title>'
            f'<text class="label" x="{label_w - 8}" y="{y + 15}" text-anchor="end">'
            f"{esc(_short(label))}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}"/>'
            f'<text class="value" x="{label_w + w + 6:.1f}" y="{y + 15}">'
            f"{esc(note or number(value))}</text></g>"
        )
    return _svg(top * 2 + row_h * max(len(items), 1), "".join(parts), title)


def columns(
    items: Sequence[tuple[str, int]],
    *,
    title: str,
    log_y: bool = False,
    marker: tuple[float, str] | None = None,
    every: int = 1,
) -> str:
    """One column per (label, count); ``marker`` (x in columns, text) draws a dashed line.

    ``every``: label every n-th column only (many months). A log scale shows 1 and 1,000,000
    side by side; each column's exact count is in its tooltip.
    """
    left, bottom, top, height = 56, 36, 18, 200
    n = max(len(items), 1)
    step = (WIDTH - left - 8) / n
    most = max((c for _, c in items), default=0) or 1

    def scale(c: int) -> float:
        if c <= 0:
            return 0.0
        if log_y:
            return height * math.log10(c + 1) / math.log10(most + 1)
        return height * c / most

    parts = [_axis(left, top, height, most, log_y)]
    for i, (label, count) in enumerate(items):
        h = scale(count)
        x = left + i * step
        parts.append(
            f'<g class="col"><title>{esc(label)}: {number(count)}</title>'
            f'<rect x="{x + step * 0.1:.1f}" y="{top + height - h:.1f}" '
            f'width="{max(step * 0.8, 0.5):.1f}" height="{h:.1f}"/></g>'
        )
        if i % every == 0:
            parts.append(
                f'<text class="tick" x="{x + step / 2:.1f}" y="{top + height + 14}" '
                f'text-anchor="middle">{esc(label)}</text>'
            )
    if marker is not None:
        mx = left + marker[0] * step
        parts.append(
            f'<g class="marker"><line x1="{mx:.1f}" x2="{mx:.1f}" y1="{top - 6}" '
            f'y2="{top + height}"/><text x="{mx - 4:.1f}" y="{top - 8}" text-anchor="end">'
            f"{esc(marker[1])}</text></g>"
        )
    return _svg(top + height + bottom, "".join(parts), title)


def _axis(left: int, top: int, height: int, most: int, log_y: bool) -> str:
    ticks = [0, most] if not log_y else [0, *(10**k for k in range(0, 10) if 10**k <= most)]
    out = [f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + height}"/>']
    for t in ticks:
        if log_y:
            y = top + height - height * math.log10(t + 1) / math.log10(most + 1)
        else:
            y = top + height - height * t / most
        out.append(
            f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{number(t)}</text>"
        )
    return "".join(out)


def line(points: Sequence[tuple[float, float]], *, title: str, x_unit: str, y_unit: str) -> str:
    """A line through (x, y) points from zero, axes labelled with their ends."""
    left, bottom, top, height = 72, 30, 12, 180
    max_x = max((x for x, _ in points), default=0) or 1
    max_y = max((y for _, y in points), default=0) or 1
    w = WIDTH - left - 16
    xy = [(left + w * x / max_x, top + height - height * y / max_y) for x, y in points]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in [(left, top + height), *xy])
    body = (
        f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + height}"/>'
        f'<line class="axis" x1="{left}" x2="{left + w}" y1="{top + height}" '
        f'y2="{top + height}"/><polyline class="trace" points="{path}"/>'
        f'<text class="tick" x="{left - 6}" y="{top + 8}" text-anchor="end">'
        f"{number(max_y)}</text>"
        f'<text class="tick" x="{left - 6}" y="{top + height}" text-anchor="end">0</text>'
        f'<text class="tick" x="{left + w}" y="{top + height + 16}" text-anchor="end">'
        f"{esc(f'{max_x:,.1f} {x_unit}' if max_x < 10 else f'{max_x:,.0f} {x_unit}')}</text>"
        f'<text class="tick" x="{left}" y="{top + height + 16}">0 {esc(x_unit)}</text>'
        f'<text class="tick" x="{left + 6}" y="{top + 10}">{esc(y_unit)}</text>'
    )
    return _svg(top + height + bottom, body, title)
