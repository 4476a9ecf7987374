"""Small inline SVG charts, written as text: no JavaScript, no external assets.

Every piece of text that reaches the markup goes through ``esc`` (html.escape, quotes too);
numbers are formatted here. Each chart scales to its container (``viewBox``, width 100%)
and carries ``<title>`` tooltips and an ``aria-label``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

SCORE_COLORS = {1: "#2f855a", 2: "#d69e2e", 3: "#c53030", 0: "#a0aec0"}
SCORE_NAMES = {1: "1 acceptable", 2: "2 minor issues", 3: "3 major errors", 0: "0 not assessable"}
STACK_ORDER = (1, 2, 3, 0)
SERIES_COLORS = {"interpretation": "#2b6cb0", "annotation": "#805ad5"}
INK, MUTED, GRID = "#1a202c", "#4a5568", "#e2e8f0"


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: float | None, places: int = 3) -> str:
    return "–" if value is None else f"{value:.{places}f}"


def _svg(width: int, height: int, label: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img" aria-label="{esc(label)}" font-size="12" fill="{INK}">' + "".join(body) + "</svg>")


def _text(x: float, y: float, text: str, *, anchor: str = "start", size: int | None = None, color: str = INK,
          weight: str | None = None, title: str | None = None) -> str:
    attrs = f'x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{color}"'
    if size:
        attrs += f' font-size="{size}"'
    if weight:
        attrs += f' font-weight="{weight}"'
    tip = f"<title>{esc(title)}</title>" if title else ""
    return f"<text {attrs}>{tip}{esc(text)}</text>"


def _rect(x: float, y: float, w: float, h: float, color: str, *, title: str | None = None, rx: int = 0) -> str:
    tip = f"<title>{esc(title)}</title>" if title else ""
    return (f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{h:.1f}" rx="{rx}" fill="{color}">'
            f"{tip}</rect>")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _legend(items: Sequence[tuple[str, str]], x: float, y: float) -> list[str]:
    out: list[str] = []
    for name, color in items:
        out.append(_rect(x, y - 9, 10, 10, color, rx=2))
        out.append(_text(x + 14, y, name, color=MUTED))
        x += 26 + 6.2 * len(name)
    return out


def empty_chart(label: str, message: str = "No reviews in this window", width: int = 560, height: int = 120) -> str:
    return _svg(width, height, label, [
        f'<rect x="1" y="1" width="{width - 2}" height="{height - 2}" rx="6" fill="#f7fafc" stroke="{GRID}" '
        'stroke-dasharray="4 4"/>',
        _text(width / 2, height / 2 + 4, message, anchor="middle", color=MUTED)])


# --- 100 % stacked bars: the score distribution -------------------------------------------------


@dataclass(frozen=True)
class StackRow:
    label: str
    distribution: dict[int, int]


def stacked_distribution(rows: Sequence[StackRow], label: str, width: int = 560) -> str:
    """One 100 % stacked bar per row (score 1, 2, 3, then 0), counts inside the segments."""
    if not rows:
        return empty_chart(label)
    left, right, bar_h, gap, top = 190, 52, 24, 14, 34
    span = width - left - right
    height = top + len(rows) * (bar_h + gap) + 4
    body = _legend([(SCORE_NAMES[s], SCORE_COLORS[s]) for s in STACK_ORDER], 4, 14)
    for i, row in enumerate(rows):
        y = top + i * (bar_h + gap)
        n = sum(row.distribution.values())
        body.append(_text(left - 8, y + bar_h / 2 + 4, _clip(row.label, 30), anchor="end", title=row.label))
        body.append(_text(width - right + 8, y + bar_h / 2 + 4, f"n={n}", color=MUTED))
        if n == 0:
            body.append(_rect(left, y, span, bar_h, "#f7fafc", rx=3))
            continue
        x = float(left)
        for score in STACK_ORDER:
            count = row.distribution.get(score, 0)
            if not count:
                continue
            w = span * count / n
            share = 100 * count / n
            body.append(_rect(x, y, w, bar_h, SCORE_COLORS[score],
                              title=f"{row.label}: {SCORE_NAMES[score]}: {count} of {n} ({share:.1f}%)"))
            if w >= 26:
                body.append(_text(x + w / 2, y + bar_h / 2 + 4, str(count), anchor="middle", color="#ffffff",
                                  weight="600"))
            x += w
    return _svg(width, height, label, body)


# --- grouped horizontal bars: mean score per category ------------------------------------------


@dataclass(frozen=True)
class MeanRow:
    label: str
    interpretation: float | None
    annotation: float | None
    cases: int


def mean_bars(rows: Sequence[MeanRow], label: str, width: int = 560, *, scale_max: float = 3.0) -> str:
    """Two bars per category (interpretation, annotation) on a 0-3 scale; lower is better."""
    if not rows:
        return empty_chart(label)
    left, right, bar_h, inner, gap, top = 184, 48, 11, 3, 12, 30
    span = width - left - right
    row_h = 2 * bar_h + inner + gap
    height = top + len(rows) * row_h + 22
    body = _legend([(name, color) for name, color in SERIES_COLORS.items()], left, 14)
    axis_bottom = top + len(rows) * row_h - gap / 2
    for tick in (0, 1, 2, 3):
        x = left + span * tick / scale_max
        body.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{axis_bottom:.1f}" stroke="{GRID}"/>')
        body.append(_text(x, axis_bottom + 14, str(tick), anchor="middle", color=MUTED))
    for i, row in enumerate(rows):
        y = top + i * row_h
        body.append(_text(left - 8, y + bar_h + 5, _clip(f"{row.label} ({row.cases})", 28), anchor="end",
                          title=f"{row.label}: {row.cases} cases"))
        for j, (series, value) in enumerate((("interpretation", row.interpretation),
                                             ("annotation", row.annotation))):
            by = y + j * (bar_h + inner)
            if value is None:
                body.append(_text(left + 4, by + bar_h - 1, "no score 1-3", size=10, color=MUTED))
                continue
            w = span * value / scale_max
            body.append(_rect(left, by, w, bar_h, SERIES_COLORS[series], rx=2,
                              title=f"{row.label}: {series} mean {value:.3f}"))
            body.append(_text(left + w + 4, by + bar_h - 1, fmt(value), size=10, color=MUTED))
    return _svg(width, height, label, body)


# --- line chart: mean score per day --------------------------------------------------------------


@dataclass(frozen=True)
class DayPoint:
    day: date
    interpretation: float | None
    annotation: float | None
    cases: int


def daily_means(points: Sequence[DayPoint], label: str, width: int = 560, height: int = 260) -> str:
    """Mean score per UTC day, one line per dimension, x spaced by real dates; y from 1 to 3."""
    if not points:
        return empty_chart(label)
    left, right, top, bottom = 44, 20, 30, 44
    pw, ph = width - left - right, height - top - bottom
    first, last = points[0].day, points[-1].day
    days = max((last - first).days, 1)

    def px(day: date) -> float:
        return left + pw / 2 if first == last else left + pw * (day - first).days / days

    def py(value: float) -> float:
        return top + ph * (3 - value) / 2  # 3 at the top, 1 at the bottom

    body = _legend([(name, color) for name, color in SERIES_COLORS.items()], left, 14)
    for tick in (1.0, 1.5, 2.0, 2.5, 3.0):
        y = py(tick)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="{GRID}"/>')
        body.append(_text(left - 6, y + 4, f"{tick:g}", anchor="end", color=MUTED))
    step = max(1, -(-len(points) // 6))
    ticks = list(points[::step])
    if ticks[-1] is not points[-1]:
        if len(ticks) > 1 and px(points[-1].day) - px(ticks[-1].day) < pw / 8:
            ticks.pop()  # too close to the last day's label
        ticks.append(points[-1])
    for point in ticks:
        x = px(point.day)
        body.append(f'<line x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 4}" stroke="{MUTED}"/>')
        body.append(_text(x, top + ph + 18, point.day.isoformat()[5:] if point is not ticks[0]
                          else point.day.isoformat(), anchor="middle", color=MUTED, size=11))
    for series, color in SERIES_COLORS.items():
        segment: list[str] = []
        segments: list[list[str]] = []
        for point in points:
            value = getattr(point, series)
            if value is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{px(point.day):.1f},{py(value):.1f}")
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) > 1:
                body.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" stroke-width="2.5" '
                            'stroke-linejoin="round"/>')
        for point in points:
            value = getattr(point, series)
            if value is not None:
                tip = f"{point.day.isoformat()}: {series} mean {value:.3f} ({point.cases} cases)"
                body.append(f'<circle cx="{px(point.day):.1f}" cy="{py(value):.1f}" r="4" fill="{color}" '
                            f'stroke="#ffffff" stroke-width="1.5"><title>{esc(tip)}</title></circle>')
    return _svg(width, height, label, body)


def mini_distribution(distribution: dict[int, int], width: int = 96, height: int = 10) -> str:
    """A tiny stacked bar for a table cell."""
    n = sum(distribution.values())
    if n == 0:
        return ""
    parts: list[str] = []
    x = 0.0
    for score in STACK_ORDER:
        count = distribution.get(score, 0)
        if count:
            w = width * count / n
            parts.append(_rect(x, 0, w, height, SCORE_COLORS[score], title=f"{SCORE_NAMES[score]}: {count}"))
            x += w
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" class="mini" aria-hidden="true">' + "".join(parts) + "</svg>")
