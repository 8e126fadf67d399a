"""The report's figures besides the ROC (:mod:`.roc_plot`): reliability diagram, interval ("forest")
plots and bar charts, drawn with Pillow alone and returned as PNG bytes."""

from __future__ import annotations

from typing import Sequence

from hipcad.runtime.evaluation.roc_plot import _font, png_bytes

K = 3  # supersampling: drawn at 3x, downsampled (anti-aliased)
BLUE, RED, GREY, DARK, LIGHT = (31, 97, 171), (200, 60, 40), (150, 150, 150), (40, 40, 40), (225, 225, 225)


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        from PIL import Image, ImageDraw

        self.size = (width, height)
        self.img = Image.new("RGB", (width * K, height * K), "white")
        self.d = ImageDraw.Draw(self.img)
        self.font = {n: _font(n * K) for n in (13, 15, 18)}

    def text(self, xy, text, size=15, anchor="la", fill=DARK) -> None:
        self.d.text((xy[0] * K, xy[1] * K), text, fill=fill, font=self.font[size], anchor=anchor)

    def width(self, text: str, size: int = 15) -> float:
        return self.d.textlength(text, font=self.font[size]) / K

    def line(self, points, fill=DARK, width=1) -> None:
        self.d.line([(x * K, y * K) for x, y in points], fill=fill, width=max(1, int(width * K)))

    def rect(self, box, fill=None, outline=None, width=1) -> None:
        x0, y0, x1, y1 = box
        self.d.rectangle([x0 * K, y0 * K, x1 * K, y1 * K], fill=fill, outline=outline, width=int(width * K))

    def dot(self, xy, r=4.5, fill=BLUE) -> None:
        x, y = xy[0] * K, xy[1] * K
        self.d.ellipse([x - r * K, y - r * K, x + r * K, y + r * K], fill=fill, outline="white", width=K)

    def png(self) -> bytes:
        from PIL import Image

        return png_bytes(self.img.resize(self.size, Image.LANCZOS))


def reliability_png(bins: Sequence[dict], title: str = "Reliability diagram", size: int = 560) -> bytes:
    """Observed share of fractures (with Wilson intervals) against the mean probability of each bin,
    the diagonal of perfect calibration, and the number of halves per bin below."""
    c = _Canvas(size, int(size * 1.18))
    left, right, top, bottom = 70, size - 20, 62, size - 40
    hist_top, hist_bottom = bottom + 32, int(size * 1.18) - 26
    w, h = right - left, bottom - top

    def xy(x, y):
        return left + x * w, bottom - y * h

    for t in (0, 0.2, 0.4, 0.6, 0.8, 1.0):
        c.line([xy(t, 0), xy(t, 1)], LIGHT)
        c.line([xy(0, t), xy(1, t)], LIGHT)
        c.text((xy(t, 0)[0], bottom + 6), f"{t:.1f}", 13, "mt")
        c.text((left - 8, xy(0, t)[1]), f"{t:.1f}", 13, "rm")
    c.line([xy(0, 0), xy(1, 1)], GREY, 1.5)
    c.rect((left, top, right, bottom), outline=DARK, width=1.5)
    pts = [(b["mean_predicted"], b["observed"], b["ci95"]) for b in bins if b["n"]]
    if pts:
        c.line([xy(x, y) for x, y, _ in pts], BLUE, 2)
    for x, y, (lo, hi) in pts:
        c.line([xy(x, lo), xy(x, hi)], BLUE, 1.5)
        c.dot(xy(x, y))
    c.text((size / 2, 14), title, 18, "mt")
    c.text((left - 58, top - 24), "observed share of fractures (95 % CI)", 13)
    # counts per bin
    most = max([b["n"] for b in bins] + [1])
    for b in bins:
        x0, x1 = xy(b["lo"], 0)[0] + 2, xy(b["hi"], 0)[0] - 2
        y0 = hist_bottom - (hist_bottom - hist_top) * b["n"] / most
        c.rect((x0, y0, x1, hist_bottom), fill=(170, 190, 215))
        if b["n"]:
            c.text(((x0 + x1) / 2, y0 - 2), str(b["n"]), 13, "mb")
    c.text((size / 2, hist_bottom + 4), "probability shown (mean per bin); bars: halves per bin", 13, "mt")
    return c.png()


def forest_png(rows: Sequence[tuple], title: str, *, reference: float | None = None, reference_label: str = "",
               lo: float = 0.0, hi: float = 1.0, width: int = 720) -> bytes:
    """One line per row ``(label, value, ci_low, ci_high[, colour])``: the value as a dot and its
    interval as a bar on a common axis from ``lo`` to ``hi``, and an optional reference line."""
    line_h = 30
    height = 70 + line_h * len(rows) + 40
    c = _Canvas(width, height)
    label_w = min(width // 2, max([c.width(r[0]) for r in rows] + [40]) + 24)
    left, right, top = label_w, width - 70, 48
    bottom = top + line_h * len(rows)

    def x_of(v):
        return left + (min(max(v, lo), hi) - lo) / (hi - lo) * (right - left)

    for i in range(6):
        t = lo + (hi - lo) * i / 5
        c.line([(x_of(t), top), (x_of(t), bottom)], LIGHT)
        c.text((x_of(t), bottom + 6), f"{t:.2f}".rstrip("0").rstrip(".") or "0", 13, "mt")
    if reference is not None:
        c.line([(x_of(reference), top - 6), (x_of(reference), bottom)], RED, 1.5)
        c.text((x_of(reference), top - 8), reference_label or f"{reference:g}", 13, "mb", RED)
    for i, (label, value, ci_lo, ci_hi, *colour) in enumerate(rows):
        colour = colour[0] if colour else BLUE
        y = top + line_h * i + line_h / 2
        c.text((left - 10, y), label, 15, "rm")
        if value is None:
            c.text((left + 6, y), "n/a", 13, "lm", GREY)
            continue
        if ci_lo is not None and ci_hi is not None:
            c.line([(x_of(ci_lo), y), (x_of(ci_hi), y)], colour, 2)
            for edge in (ci_lo, ci_hi):
                c.line([(x_of(edge), y - 5), (x_of(edge), y + 5)], colour, 1.5)
        c.dot((x_of(value), y), fill=colour)
        c.text((right + 8, y), f"{value:.3f}", 13, "lm")
    c.rect((left, top, right, bottom), outline=DARK)
    c.text((width / 2, 12), title, 18, "mt")
    return c.png()


def bars_png(items: Sequence[tuple[str, int]], title: str, width: int = 720) -> bytes:
    """Horizontal bars with their counts (e.g. studies not assessed, by reason)."""
    line_h = 28
    c = _Canvas(width, 60 + line_h * max(1, len(items)))
    label_w = min(width // 2, max([c.width(k[:48], 13) for k, _ in items] + [40]) + 20)
    left, right = label_w, width - 60
    most = max([v for _, v in items] + [1])
    for i, (label, value) in enumerate(items):
        y = 44 + line_h * i
        c.text((left - 10, y + line_h / 2 - 2), label[:48], 13, "rm")
        c.rect((left, y + 4, left + (right - left) * value / most, y + line_h - 6), fill=(170, 190, 215))
        c.text((left + (right - left) * value / most + 6, y + line_h / 2 - 2), str(value), 13, "lm")
    if not items:
        c.text((width / 2, 44), "none", 15, "mt", GREY)
    c.text((width / 2, 12), title, 18, "mt")
    return c.png()
