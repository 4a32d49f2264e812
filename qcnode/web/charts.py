"""Small SVG charts rendered on the server: no JavaScript charting library, nothing from a CDN.

The statistics page needs two shapes only — failure rate over time (lines) and failure rate
per station / operator with counts (horizontal bars) — so a few dozen lines of SVG are
simpler to keep than a vendored charting bundle, and they render in any browser or email.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

# Colour-blind-safe qualitative palette (Okabe-Ito).
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")


@dataclass(frozen=True)
class Bar:
    label: str
    rate: float  # 0..1
    failed: int
    total: int


def _pct(rate: float) -> str:
    return f"{100.0 * rate:.1f} %"


def line_chart(
    buckets: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    width: int = 720,
    height: int = 260,
) -> Markup:
    """Failure rate (0..1) per time bucket, one line per series; ``None`` leaves a gap."""
    left, right, top, bottom = 48, 160, 24, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((v for vals in series.values() for v in vals if v is not None), default=0.0)
    y_max = max(0.05, min(1.0, _nice_ceiling(peak)))
    n = len(buckets)

    def x_at(i: int) -> float:
        return left + (plot_w * (i + 0.5) / n if n else 0.0)

    def y_at(v: float) -> float:
        return top + plot_h * (1.0 - v / y_max)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
        f"<title>{escape(title)}</title>",
    ]
    steps = 4 if y_max in (0.2, 1.0) else 5  # round percentages on every grid line
    for k in range(steps + 1):
        level = y_max * k / steps
        y = y_at(level)
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{100 * level:g}%</text>"
        )
    step = max(1, n // 8)
    for i, label in enumerate(buckets):
        if i % step == 0:
            parts.append(
                f'<text x="{x_at(i):.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
                f'class="tick">{escape(label)}</text>'
            )
    for idx, (name, values) in enumerate(series.items()):
        colour = PALETTE[idx % len(PALETTE)]
        runs: list[list[str]] = [[]]
        for i, v in enumerate(values):
            if v is None:
                runs.append([])
                continue
            runs[-1].append(f"{x_at(i):.1f},{y_at(v):.1f}")
            parts.append(
                f'<circle cx="{x_at(i):.1f}" cy="{y_at(v):.1f}" r="2.5" fill="{colour}">'
                f"<title>{escape(name)} {escape(buckets[i])}: {_pct(v)}</title></circle>"
            )
        for run in runs:
            if len(run) > 1:
                parts.append(
                    f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                    f'points="{" ".join(run)}"/>'
                )
        ly = top + 14 * idx + 6
        parts.append(
            f'<rect x="{left + plot_w + 12}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{left + plot_w + 26}" y="{ly + 1}" class="legend">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(bars: Sequence[Bar], *, title: str, width: int = 720, row: int = 22) -> Markup:
    """Horizontal bars of failure rate, labelled with ``failed / total``."""
    label_w, right = 180, 120
    plot_w = width - label_w - right
    height = row * len(bars) + 16
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
        f"<title>{escape(title)}</title>",
    ]
    for i, bar in enumerate(bars):
        y = 8 + i * row
        w = plot_w * max(0.0, min(1.0, bar.rate))
        parts.append(
            f'<text x="{label_w - 8}" y="{y + row / 2 + 4:.1f}" text-anchor="end" class="tick">'
            f"{escape(bar.label or '—')}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{plot_w}" height="{row - 6}" class="track"/>'
            f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" '
            f'fill="{PALETTE[1]}"><title>{escape(bar.label)}: {_pct(bar.rate)}</title></rect>'
            f'<text x="{label_w + plot_w + 8}" y="{y + row / 2 + 4:.1f}" class="tick">'
            f"{_pct(bar.rate)} ({bar.failed}/{bar.total})</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _nice_ceiling(v: float) -> float:
    """Round a rate up to 5 %, 10 %, 20 %, 25 %, 50 % or 100 % so the axis reads well."""
    for c in (0.05, 0.1, 0.2, 0.25, 0.5, 1.0):
        if v <= c:
            return c
    return 1.0
