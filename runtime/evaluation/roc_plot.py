"""The ROC figure of an evaluation, drawn with Pillow alone (no matplotlib on a device)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except TypeError:  # pragma: no cover - very old Pillow
        return ImageFont.load_default()


def render_roc_png(fpr: Sequence[float], tpr: Sequence[float], auc: float | None, path, *,
                   title: str = "ROC curve", auc_ci: Sequence[float] | None = None,
                   points: Sequence[tuple[float, float, str]] = (), size: int = 640) -> Path | bytes:
    """Draw the ROC curve into a ``size`` x ``size`` PNG at ``path`` (Pillow only; its bytes are
    returned when ``path`` is None).

    Axes 0..1 with ticks every 0.2 and a light grid, the chance diagonal (dashed), the curve,
    and a legend with the AUC (and ``auc_ci`` = ``(lo, hi)`` when given). ``points`` marks
    operating points as ``(fpr, tpr, label)``. Drawn at 3x and downsampled (anti-aliased).
    Returns the path (or the PNG's bytes).
    """
    from PIL import Image, ImageDraw

    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.shape != tpr.shape or fpr.ndim != 1:
        raise ValueError("fpr and tpr must be 1-D arrays of the same length")
    ok = np.isfinite(fpr) & np.isfinite(tpr)
    fpr, tpr = np.clip(fpr[ok], 0, 1), np.clip(tpr[ok], 0, 1)

    k = 3  # supersampling factor
    W = size * k
    img = Image.new("RGB", (W, W), "white")
    d = ImageDraw.Draw(img)
    f_title, f_label, f_tick, f_legend = (_font(int(v * size / 640 * k)) for v in (22, 17, 15, 16))

    left, right, top, bottom = int(0.14 * W), int(0.95 * W), int(0.10 * W), int(0.86 * W)
    pw, ph = right - left, bottom - top

    def xy(x, y):
        return left + x * pw, bottom - y * ph

    grey, dark = (225, 225, 225), (40, 40, 40)
    for t in np.linspace(0, 1, 6):
        gx, _ = xy(t, 0)
        _, gy = xy(0, t)
        d.line([(gx, top), (gx, bottom)], fill=grey, width=k)
        d.line([(left, gy), (right, gy)], fill=grey, width=k)
        d.line([(gx, bottom), (gx, bottom + 6 * k)], fill=dark, width=k)
        d.line([(left - 6 * k, gy), (left, gy)], fill=dark, width=k)
        label = f"{t:.1f}"
        d.text((gx, bottom + 9 * k), label, fill=dark, font=f_tick, anchor="mt")
        d.text((left - 9 * k, gy), label, fill=dark, font=f_tick, anchor="rm")

    # chance diagonal, dashed
    n_dash = 30
    for i in range(n_dash):
        a, b = i / n_dash, (i + 0.55) / n_dash
        d.line([xy(a, a), xy(b, b)], fill=(150, 150, 150), width=2 * k)

    d.rectangle([left, top, right, bottom], outline=dark, width=2 * k)

    blue = (31, 97, 171)
    if fpr.size:
        d.line([xy(x, y) for x, y in zip(fpr, tpr)], fill=blue, width=4 * k, joint="curve")
    for px, py, plabel in points:
        cx, cy = xy(float(px), float(py))
        r = 6 * k
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(200, 60, 40), outline="white", width=k)
        if plabel:
            d.text((cx + 10 * k, cy + 4 * k), str(plabel), fill=(200, 60, 40), font=f_tick, anchor="lt")

    d.text(((left + right) / 2, top / 2), title, fill="black", font=f_title, anchor="mm")
    d.text(((left + right) / 2, W - 0.045 * W), "False positive rate (1 - specificity)", fill="black",
           font=f_label, anchor="mm")
    # y label: drawn horizontally on its own canvas, rotated
    ylabel = "True positive rate (sensitivity)"
    box = d.textbbox((0, 0), ylabel, font=f_label)
    lab = Image.new("RGB", (box[2] - box[0] + 4 * k, box[3] - box[1] + 4 * k), "white")
    ImageDraw.Draw(lab).text((2 * k - box[0], 2 * k - box[1]), ylabel, fill="black", font=f_label)
    lab = lab.rotate(90, expand=True)
    img.paste(lab, (int(0.035 * W) - lab.width // 2, (top + bottom) // 2 - lab.height // 2))

    # legend (lower right)
    if auc is None or not np.isfinite(auc):
        text = "AUC undefined"
    else:
        text = f"AUC = {auc:.3f}"
        if auc_ci is not None and None not in tuple(auc_ci):
            text += f" (95% CI {auc_ci[0]:.3f}-{auc_ci[1]:.3f})"
    lines = [(blue, text), ((150, 150, 150), "Chance")]
    tb = [d.textbbox((0, 0), t, font=f_legend) for _, t in lines]
    lh = max(b[3] - b[1] for b in tb) + 10 * k
    lw = max(b[2] - b[0] for b in tb) + 50 * k
    x0, y1 = right - 12 * k - lw, bottom - 12 * k
    y0 = y1 - lh * len(lines) - 8 * k
    d.rectangle([x0, y0, right - 12 * k, y1], fill="white", outline=(160, 160, 160), width=k)
    for i, (colour, t) in enumerate(lines):
        cy = y0 + 4 * k + lh * i + lh / 2
        d.line([(x0 + 8 * k, cy), (x0 + 36 * k, cy)], fill=colour, width=4 * k)
        d.text((x0 + 44 * k, cy), t, fill="black", font=f_legend, anchor="lm")

    img = img.resize((size, size), Image.LANCZOS)
    if path is None:
        return png_bytes(img)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=True)
    return path


def png_bytes(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
