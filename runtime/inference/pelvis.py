"""Is there a bilateral AP pelvis about the midline? The anatomical measurements of the content
check, in units of d (half the distance between the two femoral heads) so that they do not depend
on the image size, the field of view or the magnification.

The last of them compares the whole picture, resampled in that canonical frame, with an AP-pelvis
layout template: the mean of a model's training images, made when the bundle is exported or
trained (:mod:`hipcad.export.layout_template`) and stored in the bundle.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hipcad.runtime.errors import BundleError
from hipcad.runtime.inference.midline import Midline, box_mean

_template_cache: dict = {}


def load_template(path: str | Path | None) -> dict | None:
    """A layout template (``U``, ``V``, ``template`` arrays and its calibration) from an .npz file,
    cached by path; None for None."""
    if path is None:
        return None
    key = str(path)
    if key not in _template_cache:
        try:
            with np.load(key, allow_pickle=False) as z:
                _template_cache[key] = {k: z[k] for k in z.files}
        except (OSError, ValueError) as err:
            raise BundleError(f"cannot read the pelvis layout template {Path(key).name}: {err}") from err
    return _template_cache[key]


def _canonical(g: np.ndarray, axis: float, y_heads: float, d: float, U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """g sampled (bilinear) on the grid x = axis + U d, y = y_heads + V d; NaN outside the field."""
    fh, fw = g.shape
    xs = np.broadcast_to(axis + U[None, :] * d - 0.5, (V.size, U.size))
    ys = np.broadcast_to(y_heads + V[:, None] * d - 0.5, (V.size, U.size))
    valid = (xs >= 0) & (xs <= fw - 1) & (ys >= 0) & (ys <= fh - 1)
    x0 = np.clip(np.floor(xs).astype(int), 0, max(fw - 2, 0))
    y0 = np.clip(np.floor(ys).astype(int), 0, max(fh - 2, 0))
    tx = np.clip(xs - x0, 0, 1)
    ty = np.clip(ys - y0, 0, 1)
    x1 = np.minimum(x0 + 1, fw - 1)
    y1 = np.minimum(y0 + 1, fh - 1)
    v = g[y0, x0] * (1 - tx) * (1 - ty) + g[y0, x1] * tx * (1 - ty) + g[y1, x0] * (1 - tx) * ty + g[y1, x1] * tx * ty
    return np.where(valid, v, np.nan).astype(np.float32)


def correlation(patch: np.ndarray, tmpl: np.ndarray) -> tuple[float, float]:
    m = np.isfinite(patch) & np.isfinite(tmpl)
    cover = float(m.mean())
    if m.sum() < 16:
        return 0.0, cover
    a = patch[m] - patch[m].mean()
    b = tmpl[m] - tmpl[m].mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return (float((a * b).sum()) / den if den > 1e-12 else 0.0), cover


def pelvis_evidence(midline: Midline, template: dict | None = None) -> dict:
    """Anatomical measurements about the midline found by :func:`~.midline.find_midline`.

    Everything is relative to the axis and to d, half the distance between the two femoral
    heads, so that it does not depend on the image size, the field of view or the magnification.
    'image_left' / 'image_right' are sides of the picture, not of the patient.
    """
    details = midline.details
    work = details.get("_work")
    if work is None:
        return {"found": False, "why": details.get("reason", "no image content")}
    g, hp, hrow, sp = work["g"], work["head_prof"], work["head_row"], work["shaft_prof"]
    fh, fw = g.shape
    a = work["axis"]
    ev: dict = {"found": True}
    heads = {}
    for side, sgn in (("image_left", -1), ("image_right", 1)):
        lo, hi = sorted((a + sgn * 0.07 * fw, a + sgn * 0.42 * fw))
        c0, c1 = max(0, int(math.ceil(lo))), min(fw, int(hi) + 1)
        if c1 <= c0:
            heads[side] = None
            continue
        x = c0 + int(hp[c0:c1].argmax())
        heads[side] = {"x": x, "y": int(hrow[x]), "contrast": float(hp[x]), "d": abs(x + 0.5 - a)}
    ev["heads"] = heads
    if heads["image_left"] is None or heads["image_right"] is None:
        ev["found"] = False
        ev["why"] = "the midline leaves no room for a hip on one side"
        return ev
    L, R = heads["image_left"], heads["image_right"]
    d = max(1.0, 0.5 * (L["d"] + R["d"]))
    ev["head_contrast"] = {"image_left": L["contrast"], "image_right": R["contrast"]}
    ev["mirror_mismatch"] = abs(L["d"] - R["d"]) / max(L["d"], R["d"], 1e-6)
    ev["height_difference"] = abs(L["y"] - R["y"]) / fh
    ev["separation"] = 2.0 * d / fw
    ev["height"] = 0.5 * (L["y"] + R["y"] + 1.0) / fh
    flat = np.sort(g, axis=None)
    rk = max(1, int(0.1 * d))
    ranks = {}
    for side, hd in heads.items():
        y0, y1 = max(0, hd["y"] - rk), min(fh, hd["y"] + rk + 1)
        x0, x1 = max(0, hd["x"] - rk), min(fw, hd["x"] + rk + 1)
        v = float(g[y0:y1, x0:x1].mean())
        ranks[side] = float(np.searchsorted(flat, v)) / flat.size
    ev["head_brightness_rank"] = ranks
    # femoral shafts: below and lateral of each head, continuing down to the bottom of the field
    sw = max(2, int(round(0.06 * fw)))
    shafts = {}
    for side, sgn in (("image_left", -1), ("image_right", 1)):
        lo, hi = sorted((a + sgn * 0.6 * d, a + sgn * 1.9 * d))
        c0, c1 = max(0, int(math.ceil(lo))), min(fw, int(hi) + 1)
        if c1 <= c0:
            shafts[side] = {"x": None, "contrast": 0.0, "distance_ratio": 0.0, "continuity": 0.0}
            continue
        xs = c0 + int(sp[c0:c1].argmax())
        r_start = int(min(fh - 2, heads[side]["y"] + 1.2 * d))
        rows = g[r_start:, :]
        cont = 0.0
        if rows.shape[0] >= 2:
            best = np.full(rows.shape[0], -1.0, np.float32)
            for dx in (-2, -1, 0, 1, 2):
                xc = min(fw - 1, max(0, xs + dx))
                ridge = rows[:, xc] - 0.5 * (rows[:, max(0, xc - sw)] + rows[:, min(fw - 1, xc + sw)])
                np.maximum(best, ridge, out=best)
            cont = float((best > 0.03).mean())
        shafts[side] = {"x": xs, "contrast": float(sp[xs]), "distance_ratio": abs(xs + 0.5 - a) / d, "continuity": cont}
    ev["shafts"] = shafts
    # obturator foramina: dark centre-surround between each head and the midline, below the heads
    ri, ro = max(1, int(0.15 * d)), max(2, int(0.35 * d))
    y_lo = int(max(0, min(L["y"], R["y"]) + 0.15 * d))
    y_hi = int(min(fh, max(L["y"], R["y"]) + 1.2 * d))
    obt = {}
    if y_hi > y_lo:
        pad = ro + 1
        sub = g[max(0, y_lo - pad) : min(fh, y_hi + pad), :]
        inner = box_mean(sub, ri)
        outer = box_mean(sub, ro)
        ki, ko = (2 * ri + 1) ** 2, (2 * ro + 1) ** 2
        dark = (outer * ko - inner * ki) / (ko - ki) - inner
        off = y_lo - max(0, y_lo - pad)
        dark = dark[off : off + (y_hi - y_lo)]
        for side, sgn in (("image_left", -1), ("image_right", 1)):
            x0, x1 = sorted((int(a + sgn * 0.2 * d), int(a + sgn * 0.8 * d)))
            x0, x1 = max(0, x0), min(fw, x1 + 1)
            obt[side] = float(dark[:, x0:x1].max()) if x1 > x0 and dark.size else 0.0
    else:
        obt = {"image_left": 0.0, "image_right": 0.0}
    ev["obturator_contrast"] = obt
    ev["_frame"] = (a, 0.5 * (L["y"] + R["y"]) + 0.5, d)  # the canonical frame, for layout_patch
    # overall layout against the template (canonical frame: origin between the heads, unit d)
    if template is not None:
        patch = layout_patch(midline, ev, template["U"], template["V"])
        ev["layout_score"], ev["layout_coverage"] = correlation(patch, template["template"])
    return ev


def layout_patch(midline: Midline, evidence: dict, U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """The image sampled in the canonical frame of :func:`pelvis_evidence` (origin between the
    femoral heads, unit d) on the grid ``U`` (across) x ``V`` (down); NaN outside the field."""
    axis, y_heads, d = evidence["_frame"]
    return _canonical(midline.details["_work"]["g"], axis, y_heads, d, U, V)
