"""Small server-side SVG charts: horizontal bars, a line over time, a histogram.

Each function returns a self-contained ``<svg>`` as `Markup`, with every label escaped,
a ``<title>`` and ``role="img"``/``aria-label`` for screen readers, and a ``<title>`` per
mark so hovering shows the exact number. No script, no CDN, no web font, no inline
``style`` (the Content-Security-Policy forbids it): only presentation attributes and
class names (``bar``, ``line``, ``area``, ``point``, ``axis``) that the stylesheet may
restyle. Pages show the same numbers in a table next to each chart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from markupsafe import Markup, escape

#: Fill of the marks (the stylesheet may override it through the class names); text and
#: axes use ``currentColor``, so they follow the page's text colour.
MARK_COLOUR = "#3b6fb6"
#: The second series of a grouped bar chart: a lighter shade of the first.
SECOND_COLOUR = "#9db8e0"
#: In viewBox units; the stylesheet stretches a chart to its card's width, and the
#: default widths (about a desktop card's) keep the text near this size in pixels.
FONT_SIZE = 13
#: Default chart width in viewBox units.
WIDTH = 1100


def bar_chart(
    items: Sequence[tuple[str, float]], *, title: str, width: int = WIDTH, unit: str = ""
) -> Markup:
    """One horizontal bar per ``(label, value)``, labels on the left, values on the right."""
    row, gap, label_w, value_w = 20, 6, 170, 70
    height = max(1, len(items)) * (row + gap) + gap
    plot_w = width - label_w - value_w
    top = _max(value for _, value in items)
    marks: list[str] = []
    for i, (label, value) in enumerate(items):
        y = gap + i * (row + gap)
        bar_w = plot_w * value / top
        text_y = y + row / 2 + FONT_SIZE / 3
        marks.append(
            f'<text x="{label_w - 6}" y="{text_y:.1f}" text-anchor="end">'
            f"{escape(_clip(label))}</text>"
            f'<rect class="bar" x="{label_w}" y="{y}" width="{bar_w:.1f}" height="{row}" '
            f'fill="{MARK_COLOUR}"><title>{escape(label)}: {escape(_num(value, unit))}</title>'
            f"</rect>"
            f'<text x="{label_w + bar_w + 4:.1f}" y="{text_y:.1f}">{escape(_num(value, unit))}</text>'
        )
    if not items:
        marks.append(f'<text x="{width / 2}" y="{row}" text-anchor="middle">no data</text>')
    return _svg(width, height, title, "".join(marks))


def grouped_bar_chart(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
    width: int = WIDTH,
) -> Markup:
    """Horizontal bars per label, one per series (at most two: ``(name, values)``, the
    values in the order of ``labels``), on one scale, with a legend above."""
    if len(series) > 2 or any(len(values) != len(labels) for _, values in series):
        raise ValueError("one or two series, each with a value per label")
    colours = (MARK_COLOUR, SECOND_COLOUR)
    bar, gap, legend_h, label_w, value_w = 16, 10, 26, 170, 70
    group = bar * len(series) + gap
    height = legend_h + max(1, len(labels)) * group + gap
    plot_w = width - label_w - value_w
    top = _max(v for _, values in series for v in values)
    parts: list[str] = []
    for k, (name, _) in enumerate(series):
        x = label_w + k * 160
        parts.append(
            f'<rect class="legend series-{k}" x="{x}" y="4" width="14" height="14" '
            f'fill="{colours[k]}"/><text x="{x + 20}" y="{4 + 7 + FONT_SIZE / 3:.1f}">'
            f"{escape(_clip(name, 18))}</text>"
        )
    for i, label in enumerate(labels):
        y0 = legend_h + gap + i * group
        parts.append(
            f'<text x="{label_w - 6}" y="{y0 + bar * len(series) / 2 + FONT_SIZE / 3:.1f}" '
            f'text-anchor="end">{escape(_clip(label))}</text>'
        )
        for k, (name, values) in enumerate(series):
            y, value = y0 + k * bar, values[i]
            bar_w = plot_w * value / top
            parts.append(
                f'<rect class="bar series-{k}" x="{label_w}" y="{y}" width="{bar_w:.1f}" '
                f'height="{bar - 2}" fill="{colours[k]}"><title>{escape(label)}, '
                f"{escape(name)}: {escape(_num(value, ''))}</title></rect>"
                f'<text x="{label_w + bar_w + 4:.1f}" y="{y + bar / 2 + FONT_SIZE / 3 - 1:.1f}">'
                f"{escape(_num(value, ''))}</text>"
            )
    if not labels:
        parts.append(
            f'<text x="{width / 2}" y="{legend_h + 20}" text-anchor="middle">no data</text>'
        )
    return _svg(width, height, title, "".join(parts))


def line_chart(
    points: Sequence[tuple[str, float]],
    *,
    title: str,
    width: int = WIDTH,
    height: int = 240,
    unit: str = "",
    ticks: int = 8,
) -> Markup:
    """A line (with the area under it) through ``(x label, value)`` points in order,
    with a dot per point and about ``ticks`` x labels."""
    left, right, top_pad, bottom = 52, 16, 12, 32
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    top = _max(value for _, value in points)
    step = plot_w / max(1, len(points) - 1)
    coords = [
        (left + i * step, top_pad + plot_h * (1 - value / top))
        for i, (_, value) in enumerate(points)
    ]
    base_y = top_pad + plot_h
    parts = [_y_axis(left, top_pad, plot_w, plot_h, top, unit)]
    if coords:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        first_x, last_x = coords[0][0], coords[-1][0]
        parts.append(
            f'<polygon class="area" points="{first_x:.1f},{base_y} {path} {last_x:.1f},{base_y}" '
            f'fill="{MARK_COLOUR}" fill-opacity="0.15"/>'
            f'<polyline class="line" points="{path}" fill="none" stroke="{MARK_COLOUR}" '
            f'stroke-width="2"/>'
        )
    every = max(1, -(-len(points) // max(1, ticks)))
    for i, ((label, value), (x, y)) in enumerate(zip(points, coords, strict=True)):
        parts.append(
            f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{MARK_COLOUR}">'
            f"<title>{escape(label)}: {escape(_num(value, unit))}</title></circle>"
        )
        if i % every == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{base_y + 20}" text-anchor="middle">'
                f"{escape(_clip(label, 14))}</text>"
            )
    if not points:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text>')
    return _svg(width, height, title, "".join(parts))


def histogram(
    counts: Sequence[int],
    *,
    edges: Sequence[float],
    title: str,
    width: int = WIDTH,
    height: int = 240,
) -> Markup:
    """One column per bin; bin ``i`` spans ``edges[i]`` to ``edges[i + 1]``."""
    if len(edges) != len(counts) + 1:
        raise ValueError(f"{len(counts)} bins need {len(counts) + 1} edges, not {len(edges)}")
    left, right, top_pad, bottom = 52, 16, 12, 32
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    top = _max(counts)
    col = plot_w / max(1, len(counts))
    base_y = top_pad + plot_h
    parts = [_y_axis(left, top_pad, plot_w, plot_h, top, "")]
    for i, count in enumerate(counts):
        h = plot_h * count / top
        span = f"{edges[i]:g}–{edges[i + 1]:g}"
        parts.append(
            f'<rect class="bar" x="{left + i * col + 1:.1f}" y="{base_y - h:.1f}" '
            f'width="{max(0.5, col - 2):.1f}" height="{h:.1f}" fill="{MARK_COLOUR}">'
            f"<title>{escape(span)}: {count}</title></rect>"
        )
    label_every = max(1, len(counts) // 10)
    for i in range(0, len(edges), label_every):
        parts.append(
            f'<text x="{left + i * col:.1f}" y="{base_y + 20}" text-anchor="middle">'
            f"{escape(f'{edges[i]:g}')}</text>"
        )
    return _svg(width, height, title, "".join(parts))


def _svg(width: int, height: int, title: str, body: str) -> Markup:
    label = escape(title)
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="{label}" '
        f'font-family="sans-serif" font-size="{FONT_SIZE}" fill="currentColor">'
        f"<title>{label}</title>{body}</svg>"
    )


def _y_axis(left: int, top: int, plot_w: int, plot_h: int, top_value: float, unit: str) -> str:
    """The baseline, a gridline at the maximum and at half of it, with their values."""
    parts = []
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - fraction)
        parts.append(
            f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="currentColor" stroke-opacity="{0.6 if fraction == 0 else 0.15}"/>'
            f'<text x="{left - 4}" y="{y + FONT_SIZE / 3:.1f}" text-anchor="end">'
            f"{escape(_num(top_value * fraction, unit))}</text>"
        )
    return "".join(parts)


def _max(values: Iterable[float]) -> float:
    """The largest value, never zero (so scales divide safely)."""
    largest = max((float(v) for v in values), default=0.0)
    return largest if largest > 0 else 1.0


def _num(value: float, unit: str) -> str:
    text = f"{value:.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:.2g}"
    return f"{text}{unit}"


def _clip(label: str, size: int = 22) -> str:
    return label if len(label) <= size else label[: size - 1] + "…"
