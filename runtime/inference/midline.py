"""Pelvic midline of an AP pelvis radiograph, with a confidence and the anatomy it rests on.

Device code: numpy + Pillow only, deterministic (no random numbers, no threads).

Method (all on a copy of the image 160 pixels wide, area-averaged, so that the result does not
depend on the decode resolution, JPEG noise or a grey level here and there):

1. Field: uniform borders (collimator shutters, black or white frames, letterboxing) are
   trimmed; everything below is computed inside the exposed field only.
2. Contrast: grey levels are mapped to 0..1 between the 1st and 99th percentile of the field.
3. Mirror symmetry S(a) of the edge map (gradient magnitude, the strongest 10 % clipped) for
   every candidate axis a (between two columns, 15-85 % of the width), as the normalised
   cross-correlation of the columns left of a with the mirrored columns right of it, averaged
   over three window spans (12, 22 and 32 % of the width). The wide spans matter: a single
   femur is also mirror-symmetric about its own axis over a narrow window (the false optimum
   near a third of the width), but not over a window that reaches the other hip.
4. Anatomy, what an AP pelvis has and a false axis has not:
   * H(a): two femoral heads mirrored about a -- the strongest centre-surround bright blob
     (head radius 4.5-10 % of the width) per column in the band of rows 20-85 % of the field,
     paired with the column mirrored about a at 8-40 % of the width away, scored by the weaker
     of the two and only where their rows agree;
   * T(a): two femoral shafts mirrored about a -- bright vertical bands in the lowest quarter
     of the field, paired the same way.
   The combined score is J(a) = S(a) + 0.8 H(a) + 0.8 T(a) - 0.15 ((a - 0.5 W) / 0.35 W)^2
   (the last term: a weak prior towards the centre, which only matters between otherwise
   equal candidates).
5. The midline is the maximum of J, refined to a fraction of a column by a parabola through
   the three best positions. The runner-up is the best local maximum of J at least 6 % of the
   width away. Confidence (0..1) is the product of
   * margin = clip((J1 - J2) / 0.25, 0, 1): how clearly the winner beats the runner-up; two
     near-equal optima give a low value, which is exactly when a grey level could flip them;
   * strength = clip((S1 - 0.05) / 0.25, 0, 1): how symmetric the image is about the winner
     at all (an image with no mirror axis has no midline to find).
   Thresholds: the bundle's intended use (``midline``; by default confidence < 0.35 warns, < 0.15
   makes the image ineligible).

``find_midline`` returns a :class:`Midline`: the column in ``pixels``, the confidence, and details:
the symmetry at the axis and the field's proportions (read by :mod:`.eligibility`) and the
work-resolution maps (``_work``: the smoothed image, the femoral-head and shaft profiles, the axis)
that :mod:`.pelvis` measures the anatomy on, so the content check costs no second pass over the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

WORK_WIDTH = 160
SEARCH = (0.15, 0.85)  # fraction of the (field) width searched for the axis
SPANS = (0.12, 0.22, 0.32)  # symmetry window half-widths, fraction of the width
HEAD_RADII = (0.045, 0.06, 0.08, 0.10)  # femoral head radius, fraction of the width
MIN_SEARCH_SIDE = 16  # an image smaller than this on a side has no midline to look for
HEAD_ROWS = (0.20, 0.85)  # band of rows (fraction of the field height) where the heads are looked for
HEAD_PAIR = (0.08, 0.40)  # distance of each head from the axis, fraction of the width
SHAFT_ROWS = 0.25  # the lowest quarter of the field: femoral shafts
SHAFT_WIDTH = 0.06  # half-distance of the flanks compared with a shaft, fraction of the width
SHAFT_PAIR = (0.08, 0.45)
ROW_TOL = 0.10  # the two heads' rows may differ by this fraction of the field height
W_HEAD, W_SHAFT, W_PRIOR = 0.8, 0.8, 0.15
RUNNER_UP_DIST = 0.06
MARGIN_SCALE = 0.25
STRENGTH = (0.05, 0.25)  # S1 at which strength starts, and the span to reach 1


@dataclass
class Midline:
    """Where the image is split: ``x`` (a column of the pixels it was found on), how sure
    (``confidence``, 0..1), and the measurements behind it (``details``; ``_work`` holds the
    work-resolution maps, which are not JSON)."""

    x: int
    confidence: float
    details: dict = field(default_factory=dict, repr=False)


def _small(pixels: np.ndarray) -> np.ndarray:
    rows, cols = pixels.shape
    w = min(WORK_WIDTH, cols)
    h = max(16, int(round(rows * w / cols)))
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    if (h, w) != (rows, cols):
        img = img.resize((w, h), Image.BOX, reducing_gap=2.0 if cols > 2 * w else None)
    return np.asarray(img, dtype=np.float32)


def field_box(small: np.ndarray, tol: float = 2.0, tol_diff: float = 0.8) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1) of the exposed field: border rows / columns trimmed while they are
    uniform (standard deviation < tol grey levels) or smooth along their length (mean absolute
    step < tol_diff: a shutter or frame under an exposure ramp)."""
    h, w = small.shape
    row_flat = (small.std(axis=1) < tol) | (np.abs(np.diff(small, axis=1)).mean(axis=1) < tol_diff)
    col_flat = (small.std(axis=0) < tol) | (np.abs(np.diff(small, axis=0)).mean(axis=0) < tol_diff)
    r0, r1, c0, c1 = 0, h, 0, w
    for _ in range(2):  # a second pass on the trimmed box catches strips hidden by the other borders
        while c1 - c0 > 8 and col_flat[c0]:
            c0 += 1
        while c1 - c0 > 8 and col_flat[c1 - 1]:
            c1 -= 1
        while r1 - r0 > 8 and row_flat[r0]:
            r0 += 1
        while r1 - r0 > 8 and row_flat[r1 - 1]:
            r1 -= 1
        sub = small[r0:r1, c0:c1]
        rf = (sub.std(axis=1) < tol) | (np.abs(np.diff(sub, axis=1)).mean(axis=1) < tol_diff)
        cf = (sub.std(axis=0) < tol) | (np.abs(np.diff(sub, axis=0)).mean(axis=0) < tol_diff)
        row_flat = np.zeros(h, bool)
        col_flat = np.zeros(w, bool)
        row_flat[r0:r1] = rf
        col_flat[c0:c1] = cf
    return r0, r1, c0, c1


def box_mean(img: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 box around every pixel (edges clamped), via an integral image."""
    p = np.pad(img, r + 1, mode="edge").astype(np.float64)
    ii = p.cumsum(0).cumsum(1)
    h, w = img.shape
    k = 2 * r + 1
    s = ii[k : k + h, k : k + w] - ii[0:h, k : k + w] - ii[k : k + h, 0:w] + ii[0:h, 0:w]
    return (s / (k * k)).astype(np.float32)


def _pair_max(profile: np.ndarray, rows: np.ndarray | None, q: np.ndarray, kmin: int, kmax: int,
              row_tol: float) -> np.ndarray:
    """For every axis q (pairs of columns i + j = q, q odd): max over mirrored pairs of
    min(profile[i], profile[j]) at half-distance (j - i) / 2 in [kmin, kmax] columns."""
    w = profile.size
    ks = np.arange(2 * kmin + 1, 2 * kmax + 2, 2)  # odd distances j - i
    i = (q[None, :] - ks[:, None]) // 2
    j = (q[None, :] + ks[:, None]) // 2
    valid = (i >= 0) & (j < w)
    ic, jc = np.clip(i, 0, w - 1), np.clip(j, 0, w - 1)
    v = np.minimum(profile[ic], profile[jc])
    if rows is not None:
        v = np.where(np.abs(rows[ic] - rows[jc]) <= row_tol, v, v - 0.5 * np.abs(v))
    v = np.where(valid, v, -np.inf)
    score = v.max(axis=0)
    return np.where(np.isfinite(score), score, 0.0).astype(np.float32)


def midline_of(pixels: np.ndarray) -> "Midline | None":
    """:func:`find_midline`, or None for an image too small to look at (under :data:`MIN_SEARCH_SIDE`)."""
    return find_midline(pixels) if min(pixels.shape) >= MIN_SEARCH_SIDE else None


def find_midline(pixels: np.ndarray) -> Midline:
    """The pelvic midline of ``pixels`` (2-D uint8, bone bright); see the module's description."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 2:
        raise ValueError("find_midline needs a 2-D image")
    rows, cols = pixels.shape
    if cols < 24 or rows < 2:
        return Midline(int(cols // 2), 0.0, {"reason": "too small to look for a midline"})
    small = _small(pixels)
    h, w = small.shape
    sx = cols / w  # work column -> image column
    r0, r1, c0, c1 = field_box(small)
    fh, fw = r1 - r0, c1 - c0
    details: dict = {}
    if fw < 24 or fh < 16:
        details["reason"] = "no exposed field"
        return Midline(int(cols // 2), 0.0, details)
    f = small[r0:r1, c0:c1]
    lo, hi = np.percentile(f, (1.0, 99.0))
    if hi - lo < 8.0:
        details["reason"] = "no contrast"
        return Midline(int(cols // 2), 0.0, details)
    g = np.clip((f - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    gs = box_mean(g, 1)
    # ---- edge map
    gx = np.zeros_like(gs)
    gy = np.zeros_like(gs)
    gx[:, 1:-1] = gs[:, 2:] - gs[:, :-2]
    gy[1:-1, :] = gs[2:, :] - gs[:-2, :]
    e = np.abs(gx) + np.abs(gy)
    e[:, :1] = e[:, -1:] = 0.0
    e[:1, :] = e[-1:, :] = 0.0
    np.minimum(e, np.percentile(e, 90), out=e)
    # ---- mirror symmetry for every axis between columns: pairs (i, j), i + j = q, q odd
    q_lo = max(1, int(2 * SEARCH[0] * fw)) | 1
    q_hi = min(2 * fw - 3, int(2 * SEARCH[1] * fw))
    q = np.arange(q_lo, q_hi + 1, 2)
    nq = q.size
    m_max = np.minimum((q + 1) // 2, fw - (q + 1) // 2)  # pairs available before an edge
    spans = [max(4, int(round(s * fw))) for s in SPANS]
    M = min(max(spans), int(m_max.max()))
    # columns outside the field are zero-padded: they add nothing to the sums (n counts real pairs)
    P = M + 1
    ep = np.pad(e, ((0, 0), (P, P)))
    colsum = ep.sum(axis=0)
    colsq = (ep * ep).sum(axis=0)
    acc = np.zeros((5, nq), np.float64)
    snaps = {}
    want = sorted(set(min(s, M) for s in spans))
    i_base = P + (q_lo - 1) // 2  # padded column of i for m = 0 and the first axis
    j_base = P + (q_lo + 1) // 2
    for m in range(M):
        i0, j0 = i_base - m, j_base + m
        acc[0] += (ep[:, i0 : i0 + nq] * ep[:, j0 : j0 + nq]).sum(axis=0)
        acc[1] += colsum[i0 : i0 + nq]
        acc[2] += colsum[j0 : j0 + nq]
        acc[3] += colsq[i0 : i0 + nq]
        acc[4] += colsq[j0 : j0 + nq]
        if m + 1 in want:
            snaps[m + 1] = acc.copy()
    S_parts = []
    for s in spans:
        a = snaps[min(s, M)]
        n = np.minimum(min(s, M), m_max).astype(np.float64) * fh
        cov = a[0] - a[1] * a[2] / n
        # variances floored at a tenth of the edge map's own variance per sample: a window that is
        # blank (a shutter, an empty border) must score 0, not divide by ~0 (found in evaluation
        # run 1: one phantom with a uniform strip scored S = 3e5)
        floor = 0.1 * float(e.var()) * n + 1e-9
        vl = np.maximum(a[3] - a[1] ** 2 / n, 0.0) + floor
        vr = np.maximum(a[4] - a[2] ** 2 / n, 0.0) + floor
        S_parts.append(np.clip(cov / np.sqrt(vl * vr), -1.0, 1.0))
    S = np.mean(S_parts, axis=0).astype(np.float32)
    # ---- anatomy: femoral heads (bright blobs) per column
    hr0, hr1 = int(HEAD_ROWS[0] * fh), max(int(HEAD_ROWS[0] * fh) + 1, int(HEAD_ROWS[1] * fh))
    blob = None
    for rad in HEAD_RADII:
        rp = max(2, int(round(rad * fw)))
        ri = max(1, int(round(0.6 * rp)))
        o = max(ri + 1, int(round(1.5 * rp)))
        inner = box_mean(gs, ri)
        p = np.pad(inner, o, mode="edge")
        hh, ww = inner.shape
        horiz = inner - 0.5 * (p[o : o + hh, 0:ww] + p[o : o + hh, 2 * o : 2 * o + ww])
        vert = inner - 0.5 * (p[0:hh, o : o + ww] + p[2 * o : 2 * o + hh, o : o + ww])
        # a round bright blob is brighter than its surroundings both across and along: a
        # vertical bar (a femoral shaft) or a horizontal one (a rib, a pubic ramus) is not
        resp = np.minimum(horiz, vert)
        blob = resp if blob is None else np.maximum(blob, resp)
    band = blob[hr0:hr1]
    head_prof = band.max(axis=0)
    head_row = band.argmax(axis=0) + hr0
    # ---- anatomy: femoral shafts, bright vertical bands in the lowest quarter
    sr0 = int((1.0 - SHAFT_ROWS) * fh)
    prof = gs[sr0:].mean(axis=0)
    sw = max(2, int(round(SHAFT_WIDTH * fw)))
    pp = np.pad(prof, sw, mode="edge")
    shaft_prof = prof - 0.5 * (pp[: fw] + pp[2 * sw :])
    H = _pair_max(head_prof, head_row.astype(np.float32), q, int(HEAD_PAIR[0] * fw), int(HEAD_PAIR[1] * fw),
                          ROW_TOL * fh)
    T = _pair_max(shaft_prof, None, q, int(SHAFT_PAIR[0] * fw), int(SHAFT_PAIR[1] * fw), 0)
    axis = (q + 1) / 2.0  # axis position in field columns (between columns)
    prior = -W_PRIOR * ((axis - 0.5 * fw) / (0.35 * fw)) ** 2
    J = S + W_HEAD * np.maximum(H, 0.0) + W_SHAFT * np.maximum(T, 0.0) + prior
    b = int(J.argmax())
    # sub-column refinement (parabola through the best and its neighbours)
    off = 0.0
    if 0 < b < nq - 1:
        y0, y1, y2 = float(J[b - 1]), float(J[b]), float(J[b + 1])
        den = y0 - 2 * y1 + y2
        if den < 0:
            off = float(np.clip(0.5 * (y0 - y2) / den, -0.5, 0.5))
    axis_best = axis[b] + off * 1.0  # q steps of 2 = one column
    # runner-up: best local maximum at least RUNNER_UP_DIST away
    far = np.abs(axis - axis[b]) >= RUNNER_UP_DIST * fw
    locmax = np.zeros(nq, bool)
    locmax[1:-1] = (J[1:-1] >= J[:-2]) & (J[1:-1] >= J[2:])
    locmax[0] = nq > 1 and J[0] >= J[1]
    locmax[-1] = nq > 1 and J[-1] >= J[-2]
    cand = np.where(far & locmax)[0]
    j2 = int(cand[J[cand].argmax()]) if cand.size else None
    J1 = float(J[b])
    J2 = float(J[j2]) if j2 is not None else float(J.min())
    margin = float(np.clip((J1 - J2) / MARGIN_SCALE, 0.0, 1.0))
    strength = float(np.clip((float(S[b]) - STRENGTH[0]) / STRENGTH[1], 0.0, 1.0))
    confidence = round(margin * strength, 4)
    x_img = (c0 + axis_best) * sx
    midline_x = int(np.clip(round(x_img), 1, cols - 1))
    details.update(
        symmetry=float(S[b]),
        field_aspect=float(fw * sx) / float(fh * (rows / h)),
        # work-resolution maps for the content check (pelvis.pelvis_evidence, layout_patch)
        _work={"g": gs, "head_prof": head_prof, "head_row": head_row, "shaft_prof": shaft_prof, "axis": float(axis_best)},
    )
    return Midline(midline_x, confidence, details)
