"""Small inline SVG charts for the kiosk's admin pages (no script, no style attributes: the kiosk's
content security policy allows neither; every text is escaped)."""

from __future__ import annotations

from markupsafe import Markup, escape

GRID, AXIS, TEXT, REF, NOW, WARN = "#2c3137", "#9aa0a6", "#e8eaed", "#9aa0a6", "#8ab4f8", "#f2b233"


def _svg(width: int, height: int, body: list[str], label: str) -> Markup:
    return Markup(f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
                  f'aria-label="{escape(label)}"><title>{escape(label)}</title>{"".join(body)}</svg>')


def _text(x, y, text, anchor="middle", size=12, fill=TEXT) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{fill}">{escape(text)}</text>'


def histogram(reference: list[int] | None, window: list[int], ticks: list[tuple[float, str]], label: str,
              width: int = 620, height: int = 230) -> Markup:
    """Two distributions over the same bins as shares: the reference as grey bars, the window as
    blue bars in front; ``ticks`` are (position in bins from the left, text) along the x axis."""
    left, right, top, bottom = 46, width - 10, 12, height - 40
    n = len(window)
    bw = (right - left) / n
    ref_total, win_total = sum(reference or []) or 1, sum(window) or 1
    shares = [r / ref_total for r in reference or []] + [w / win_total for w in window]
    peak = max(shares + [0.05])
    body = []
    for k in range(5):
        y = bottom - (bottom - top) * k / 4
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="{GRID}"/>')
        body.append(_text(left - 6, y + 4, f"{peak * k / 4:.0%}", "end", 11, AXIS))
    for i in range(n):
        x = left + i * bw
        if reference:
            h = (bottom - top) * reference[i] / ref_total / peak
            body.append(f'<rect x="{x + 1:.1f}" y="{bottom - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" fill="{REF}" '
                        f'fill-opacity="0.45"/>')
        h = (bottom - top) * window[i] / win_total / peak if sum(window) else 0
        body.append(f'<rect x="{x + bw * 0.25:.1f}" y="{bottom - h:.1f}" width="{bw * 0.5:.1f}" height="{h:.1f}" '
                    f'fill="{NOW}"/>')
    body.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="{AXIS}"/>')
    for i, text in ticks:
        x = left + i * bw
        body.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="{AXIS}"/>')
        body.append(_text(x, bottom + 16, text, size=11, fill=AXIS))
    body.append(_text((left + right) / 2, height - 6, "fracture number shown (bins of the log-odds)", size=11, fill=AXIS))
    return _svg(width, height, body, label)


def series(days: list[str], lines: list[tuple[str, list[float | None], str]], label: str, *,
           reference: float | None = None, width: int = 620, height: int = 200, percent: bool = True,
           top_value: float | None = None) -> Markup:
    """Daily values as lines (a gap where a value is None), with an optional dashed reference."""
    left, right, top, bottom = 46, width - 10, 12, height - 34
    values = [v for _, vs, _ in lines for v in vs if v is not None] + ([reference] if reference is not None else [])
    peak = top_value or max(values + [1e-9]) * 1.1
    n = max(len(days), 2)

    def xy(i, v):
        return left + (right - left) * i / (n - 1), bottom - (bottom - top) * min(v, peak) / peak

    body = []
    for k in range(5):
        y = bottom - (bottom - top) * k / 4
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="{GRID}"/>')
        tick = peak * k / 4
        body.append(_text(left - 6, y + 4, f"{tick:.0%}" if percent else f"{tick:.0f}", "end", 11, AXIS))
    if reference is not None:
        y = xy(0, reference)[1]
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="{WARN}" stroke-dasharray="6 4"/>')
    for name, vs, colour in lines:
        run: list[str] = []
        for i, v in enumerate(vs + [None]):
            if v is None:
                if len(run) > 1:
                    body.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{colour}" stroke-width="2"/>')
                elif run:
                    x, y = run[0].split(",")
                    body.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{colour}"/>')
                run = []
            else:
                run.append("{:.1f},{:.1f}".format(*xy(i, v)))
    for i in range(0, len(days), 7):
        x = xy(i, 0)[0]
        body.append(_text(x, bottom + 16, days[i][5:], size=11, fill=AXIS))
    legend = [(name, colour) for name, _, colour in lines] + ([("validation", WARN)] if reference is not None else [])
    for j, (name, colour) in enumerate(legend):
        body.append(f'<rect x="{left + 8 + 150 * j}" y="{height - 12}" width="12" height="4" fill="{colour}"/>')
        body.append(_text(left + 24 + 150 * j, height - 7, name, "start", 11, AXIS))
    return _svg(width, height, body, label)
