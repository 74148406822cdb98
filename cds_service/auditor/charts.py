"""Small server-rendered SVG charts for the auditor pages.

No JavaScript and no inline styles (the pages' Content-Security-Policy allows neither): colours and
fonts are SVG presentation attributes. Every chart is an image to assistive technology (role="img"
with an aria-label that reads out the data) and every bar or point carries a <title> tooltip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

PALETTE = ("#2f6db5", "#c2571a", "#3a8a3f", "#8a4fb0", "#b0304f", "#5b6b7a")
TEXT = "#1f2933"
MUTED = "#52606d"
GRID = "#d9dee3"
FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"
MAX_SPOKEN = 40  # data points read out in the aria-label before "and N more"


@dataclass(frozen=True)
class Series:
    """One line of a line chart: a value (or None for a gap) per label."""

    name: str
    values: Sequence[float | None]
    color: str | None = None


def number(value: float, unit: str = "") -> str:
    """12, 12.5, 1,234 — with the unit appended ("%" without a space)."""
    text = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}".rstrip("0").rstrip(".")
    if not unit:
        return text
    return f"{text}{unit}" if unit == "%" else f"{text} {unit}"


def nice_ticks(top: float, count: int = 4, *, whole: bool = False) -> list[float]:
    """Evenly spaced round tick values from 0 up to at least `top`."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if whole:
        step = max(1.0, math.ceil(step))
    ticks = [0.0]
    while ticks[-1] < top - 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _e(value: object) -> str:
    return str(escape(str(value)))


def _spoken(title: str, parts: list[str]) -> str:
    if not parts:
        return f"{title}: no data"
    shown = parts[:MAX_SPOKEN]
    more = f", and {len(parts) - MAX_SPOKEN} more" if len(parts) > MAX_SPOKEN else ""
    return f"{title}: {'; '.join(shown)}{more}"


def _open(title: str, label: str, width: int, height: int, kind: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-{kind}" role="img" aria-label="{_e(label)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'font-family="{_e(FONT)}" font-size="12" fill="{TEXT}">',
        f"<title>{_e(title)}</title>",
    ]


def _empty(title: str, width: int, height: int, kind: str) -> Markup:
    parts = _open(title, _spoken(title, []), width, height, kind)
    parts.append(f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" fill="none" stroke="{GRID}"/>')
    parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="{MUTED}">No data in this range</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(
    title: str,
    items: Sequence[tuple[str, float]],
    *,
    unit: str = "",
    horizontal: bool = False,
    color: str = PALETTE[0],
    width: int = 560,
    height: int = 240,
    tick_format: Callable[[str], str] = str,
    whole: bool = True,
) -> Markup:
    """Bars for labelled values: vertical (categories or days along x) or horizontal (long labels).

    `whole` keeps axis ticks on whole numbers (counts); `tick_format` shortens axis labels (the
    tooltip always names the full label).
    """
    kind = "hbar" if horizontal else "bar"
    if not items:
        return _empty(title, width, height if not horizontal else 120, kind)
    spoken = _spoken(title, [f"{label} {number(value, unit)}" for label, value in items])
    top = max(value for _, value in items)
    ticks = nice_ticks(top, whole=whole and all(float(v).is_integer() for _, v in items))
    scale_top = ticks[-1]
    if horizontal:
        return _horizontal(title, spoken, items, ticks, scale_top, unit, color, width, kind)

    left, right, top_margin, bottom = 56, 16, 28, 40
    plot_w, plot_h = width - left - right, height - top_margin - bottom
    parts = _open(title, spoken, width, height, kind)
    baseline = top_margin + plot_h
    for tick in ticks:
        y = baseline - plot_h * tick / scale_top
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{MUTED}">{_e(number(tick))}</text>')
    band = plot_w / len(items)
    bar_w = max(1.0, min(band * 0.7, 64))
    label_every = max(1, math.ceil(len(items) / max(1, plot_w // 56)))
    show_values = len(items) <= 16
    for i, (label, value) in enumerate(items):
        x = left + band * i + (band - bar_w) / 2
        h = plot_h * value / scale_top
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{baseline - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{color}">'
            f"<title>{_e(label)}: {_e(number(value, unit))}</title></rect>"
        )
        if show_values:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{baseline - h - 4:.1f}" text-anchor="middle">{_e(number(value))}</text>'
            )
        if i % label_every == 0:
            parts.append(
                f'<text x="{left + band * (i + 0.5):.1f}" y="{baseline + 16}" text-anchor="middle" fill="{MUTED}">'
                f"{_e(tick_format(label))}</text>"
            )
    parts.append(f'<line x1="{left}" y1="{top_margin}" x2="{left}" y2="{baseline}" stroke="{MUTED}"/>')
    parts.append(f'<line x1="{left}" y1="{baseline}" x2="{left + plot_w}" y2="{baseline}" stroke="{MUTED}"/>')
    if unit:
        parts.append(f'<text x="{left - 6}" y="{top_margin - 14}" text-anchor="end" fill="{MUTED}">{_e(unit)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _horizontal(
    title: str,
    spoken: str,
    items: Sequence[tuple[str, float]],
    ticks: list[float],
    scale_top: float,
    unit: str,
    color: str,
    width: int,
    kind: str,
) -> Markup:
    row, top_margin, bottom, right = 28, 8, 28, 48
    left = min(220, 16 + 7 * max(len(label) for label, _ in items))
    plot_w = width - left - right
    height = top_margin + row * len(items) + bottom
    baseline = top_margin + row * len(items)
    parts = _open(title, spoken, width, height, kind)
    for tick in ticks:
        x = left + plot_w * tick / scale_top
        parts.append(f'<line x1="{x:.1f}" y1="{top_margin}" x2="{x:.1f}" y2="{baseline}" stroke="{GRID}"/>')
        parts.append(f'<text x="{x:.1f}" y="{baseline + 16}" text-anchor="middle" fill="{MUTED}">{_e(number(tick))}</text>')
    for i, (label, value) in enumerate(items):
        y = top_margin + row * i
        w = plot_w * value / scale_top
        parts.append(f'<text x="{left - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end">{_e(label)}</text>')
        parts.append(
            f'<rect class="bar" x="{left}" y="{y + 5}" width="{w:.1f}" height="{row - 10}" fill="{color}">'
            f"<title>{_e(label)}: {_e(number(value, unit))}</title></rect>"
        )
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + row / 2 + 4:.1f}">{_e(number(value, unit))}</text>')
    parts.append(f'<line x1="{left}" y1="{top_margin}" x2="{left}" y2="{baseline}" stroke="{MUTED}"/>')
    parts.append(f'<line x1="{left}" y1="{baseline}" x2="{left + plot_w}" y2="{baseline}" stroke="{MUTED}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def line_chart(
    title: str,
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    unit: str = "",
    y_max: float | None = None,
    width: int = 560,
    height: int = 240,
    tick_format: Callable[[str], str] = str,
) -> Markup:
    """One line per series over the labels (e.g. days); None values leave a gap in the line."""
    values = [v for s in series for v in s.values if v is not None]
    if not labels or not values:
        return _empty(title, width, height, "line")
    spoken = _spoken(
        title,
        [
            f"{s.name} {label} {number(v, unit)}"
            for s in series
            for label, v in zip(labels, s.values, strict=False)
            if v is not None
        ],
    )
    ticks = nice_ticks(max(values) if y_max is None else max(y_max, *values))  # y_max is a floor, never a cut-off
    scale_top = ticks[-1]
    left, right, top_margin, bottom = 56, 16, 32, 44
    plot_w, plot_h = width - left - right, height - top_margin - bottom
    baseline = top_margin + plot_h
    parts = _open(title, spoken, width, height, "line")
    for tick in ticks:
        y = baseline - plot_h * tick / scale_top
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="{GRID}"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{MUTED}">{_e(number(tick, unit))}</text>')
    step = plot_w / len(labels)
    label_every = max(1, math.ceil(len(labels) / max(1, plot_w // 56)))
    for i, label in enumerate(labels):
        if i % label_every == 0:
            parts.append(
                f'<text x="{left + step * (i + 0.5):.1f}" y="{baseline + 16}" text-anchor="middle" fill="{MUTED}">'
                f"{_e(tick_format(label))}</text>"
            )
    legend_x = left
    for n, s in enumerate(series):
        color = s.color or PALETTE[n % len(PALETTE)]
        parts.append(f'<rect x="{legend_x}" y="8" width="12" height="12" fill="{color}"/>')
        parts.append(f'<text x="{legend_x + 16}" y="18">{_e(s.name)}</text>')
        legend_x += 32 + 7 * len(s.name)
        segment: list[str] = []
        points: list[str] = []
        radius = max(2.5, 5.5 - 1.5 * n)  # later series drawn smaller, so equal values stay visible
        for i, (label, value) in enumerate(zip(labels, s.values, strict=False)):
            if value is None:
                if len(segment) > 1:
                    points.insert(0, _polyline(segment, color))
                segment = []
                continue
            x, y = left + step * (i + 0.5), baseline - plot_h * value / scale_top
            segment.append(f"{x:.1f},{y:.1f}")
            points.append(
                f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{color}">'
                f"<title>{_e(s.name)}, {_e(label)}: {_e(number(value, unit))}</title></circle>"
            )
        if len(segment) > 1:
            points.insert(0, _polyline(segment, color))
        parts.extend(points)
    parts.append(f'<line x1="{left}" y1="{top_margin}" x2="{left}" y2="{baseline}" stroke="{MUTED}"/>')
    parts.append(f'<line x1="{left}" y1="{baseline}" x2="{left + plot_w}" y2="{baseline}" stroke="{MUTED}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _polyline(points: list[str], color: str) -> str:
    return f'<polyline points="{" ".join(points)}" fill="none" stroke="{color}" stroke-width="2"/>'
