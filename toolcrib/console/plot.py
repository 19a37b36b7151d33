"""Server-rendered SVG charts for the console: no JavaScript, no chart library, nothing fetched.

Every chart is an ``<svg role="img">`` with a ``<title>`` and ``<desc>`` (read by screen readers)
and a ``<title>`` on every bar (the browser shows it as a tooltip), so the figures are reachable
without the picture. Colours come from the console's stylesheet (classes ``bar``, ``bar loaded``,
``plot``), never from ``style=`` attributes (the console's CSP allows no inline styles).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup


@dataclass(frozen=True)
class Series:
    """One kind of bar: its name (legend and tooltips) and CSS class (``bar`` + ``css``)."""

    name: str
    css: str


@dataclass(frozen=True)
class Group:
    """One x-axis position: its label (short, under the axis), key (``data-key``, e.g. an ISO day),
    a longer title for tooltips, and one value per series (non-negative)."""

    label: str
    key: str
    title: str
    values: tuple[float, ...]


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round y-axis ticks from 0 to at least ``top`` (about ``count`` of them): steps of 1, 2 or 5
    times a power of ten. ``top <= 0`` gives ``[0, 1]``."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / max(1, count)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def short_number(value: float) -> str:
    """An axis label: ``950``, ``12k``, ``1.5M``."""
    v = abs(value)
    if v >= 1_000_000:
        return f"{value / 1_000_000:.3g}M"
    if v >= 10_000:
        return f"{value / 1_000:.3g}k"
    return f"{value:,.0f}"


def _f(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def grouped_bars(
    groups: Sequence[Group],
    series: Sequence[Series],
    *,
    title: str,
    desc: str,
    unit: str,
    chart_id: str = "chart",
    width: int = 900,
    height: int = 260,
) -> Markup:
    """A grouped bar chart: for each group one bar per series, side by side, on a shared y axis
    from 0 with round ticks labelled in ``unit``. Returns markup safe to put in a template (every
    text is escaped). Each bar is ``<rect class="bar CSS" data-key=KEY data-series=NAME
    data-value=V>`` with a ``<title>`` ``TITLE: NAME V UNIT``."""
    left, right, top_pad, bottom = 64, 12, 12, 34
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    peak = max((v for g in groups for v in g.values), default=0.0)
    ticks = nice_ticks(peak)
    y_max = ticks[-1]

    def y(value: float) -> float:
        return top_pad + plot_h - (value / y_max) * plot_h

    out = [
        f'<svg class="plot" id="{escape(chart_id)}" role="img" aria-labelledby="{escape(chart_id)}-title '
        f'{escape(chart_id)}-desc" viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMidYMid meet" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
        f'<desc id="{escape(chart_id)}-desc">{escape(desc)}</desc>',
    ]
    for t in ticks:
        ty = _f(y(t))
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{ty}" y2="{ty}"/>')
        out.append(f'<text class="tick" x="{left - 6}" y="{ty}" text-anchor="end" dy="0.32em">{short_number(t)}</text>')
    out.append(
        f'<text class="axis-title" x="12" y="{_f(top_pad + plot_h / 2)}" text-anchor="middle" '
        f'transform="rotate(-90 12 {_f(top_pad + plot_h / 2)})">{escape(unit)}</text>'
    )
    if groups:
        slot = plot_w / len(groups)
        inner = slot * 0.8
        bar_w = inner / max(1, len(series))
        label_every = max(1, math.ceil(len(groups) / 16))
        for i, g in enumerate(groups):
            x0 = left + i * slot + (slot - inner) / 2
            for j, s in enumerate(series):
                value = g.values[j] if j < len(g.values) else 0.0
                top = y(value)
                out.append(
                    f'<rect class="bar {escape(s.css)}" x="{_f(x0 + j * bar_w)}" y="{_f(top)}" '
                    f'width="{_f(max(1.0, bar_w - 1))}" height="{_f(top_pad + plot_h - top)}" '
                    f'data-key="{escape(g.key)}" data-series="{escape(s.name)}" data-value="{value:g}">'
                    f"<title>{escape(g.title)}: {escape(s.name)} {value:,.0f} {escape(unit)}</title></rect>"
                )
            if i % label_every == 0 or i == len(groups) - 1:
                out.append(
                    f'<text class="label" x="{_f(left + i * slot + slot / 2)}" y="{height - bottom + 16}" '
                    f'text-anchor="middle">{escape(g.label)}</text>'
                )
    base_y = _f(top_pad + plot_h)
    out.append(f'<line class="axis" x1="{left}" x2="{width - right}" y1="{base_y}" y2="{base_y}"/>')
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every text and attribute above went through escape()


def term_bar(terms: Sequence[tuple[str, float, str]], *, scale: float, width: int = 120, height: int = 12) -> Markup:
    """A small horizontal stacked bar of score terms (``(name, value, css)``; negative values are
    drawn as 0), ``scale`` = the value that fills ``width``. For the search playground."""
    out = [
        f'<svg class="terms" role="img" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        'xmlns="http://www.w3.org/2000/svg">',
        "<title>" + escape(", ".join(f"{name} {value:.3f}" for name, value, _ in terms)) + "</title>",
        f'<rect class="track" x="0" y="0" width="{width}" height="{height}"/>',
    ]
    x = 0.0
    for _name, value, css in terms:
        w = 0.0 if scale <= 0 else max(0.0, value) / scale * width
        w = min(w, width - x)
        if w > 0:
            out.append(f'<rect class="{escape(css)}" x="{_f(x)}" y="0" width="{_f(w)}" height="{height}"/>')
            x += w
    out.append("</svg>")
    return Markup("".join(out))  # noqa: S704 - every text and attribute above went through escape()
