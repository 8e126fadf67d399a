"""Rendering a case into a phantom image: the low-resolution anatomy, CR/DX processing, the\nfull-resolution fracture line, noise, marker and collimation, and the vendor's tone curve."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from hipcad.runtime.evaluation.dataset import Box
from hipcad.runtime.synth.anatomy import (
    _SIDE_SIGN,
    _add_gas,
    _bandpass_texture,
    _femur_att,
    _femur_box_uv,
    _fracture_line,
    _fragment_transform,
    _Frame,
    _innominate_att,
    _midline_att,
    _proximal_mask,
    _region_box_uv,
    _shapes,
    _soft_att,
    _wiggle,
)
from hipcad.runtime.synth.cases import CaseSpec, FractureSpec, _rngs, sample_case
from hipcad.runtime.synth.formats import _LOW_RES_WIDTH, _LUT_SIZE
from hipcad.runtime.synth.geometry import _band, _rot, _smoothstep


@dataclass
class Phantom:
    """A rendered phantom in the standard orientation (image left = patient right).

    ``pixels``: the stored values (uint8 for 8 bits, else uint16), MONOCHROME1 already
    inverted when ``vendor["mono1"]``; ``boxes``: the fracture box per fractured patient
    side; ``regions``: the ``neck_trochanter`` box per side. Boxes are (x0, y0, x1, y1) in
    pixels of this (standard) orientation; :func:`write_phantom` mirrors them when the file is
    stored mirrored.
    """

    spec: CaseSpec
    pixels: np.ndarray
    boxes: dict[str, Box]
    regions: dict[str, dict[str, Box]]
    midline_x: float  # image x of the pelvic midline at the level of the femoral heads

    @property
    def fracture(self) -> FractureSpec | None:
        return self.spec.fracture

    @property
    def vendor(self) -> dict:
        return self.spec.vendor

    def window(self) -> tuple[float, float]:
        """(center, width) of the VOI window, in stored values."""
        return _window(self.spec.vendor)

    def display(self) -> np.ndarray:
        """uint8, bone bright, after the window (what a viewer shows)."""
        c, w = self.window()
        x = (self.pixels.astype(np.float32) - (c - w / 2.0)) / w
        if self.spec.vendor["mono1"]:
            x = 1.0 - x
        return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _window(vd: dict) -> tuple[float, float]:
    lo, hi = vd["stored_range"]
    maxval = (1 << vd["bits"]) - 1
    center, width = (lo + hi) / 2.0, (hi - lo) * vd["window_scale"]
    if vd["mono1"]:
        center = maxval - center
    return center, max(width, 2.0)


def _tone_lut(vd: dict) -> tuple[np.ndarray, float]:
    x = np.linspace(0.0, 1.0, _LUT_SIZE, dtype=np.float64)
    y = x ** vd["gamma"]
    y = (1.0 - vd["s_curve"]) * y + vd["s_curve"] * (y * y * (3.0 - 2.0 * y))
    lo, hi = vd["stored_range"]
    maxval = (1 << vd["bits"]) - 1
    vals = lo + y * (hi - lo)
    if vd["mono1"]:
        vals = maxval - vals
    dtype = np.uint8 if vd["bits"] <= 8 else np.uint16
    return np.clip(np.rint(vals), 0, maxval).astype(dtype), maxval


def _render_low(spec: CaseSpec, rngs, shape, sx, sy, fx_side_sign: int | None):
    """The attenuation image at low resolution.

    Returns (A, fx_patch) where fx_patch = (femur as drawn, femur intact, (r0, r1, c0, c1)) for
    the fractured side (None without a fracture).
    """
    an = spec.anatomy
    frame = _Frame(an)
    hl, wl = shape
    xs = (np.arange(wl, dtype=np.float64) + 0.5) * sx
    ys = (np.arange(hl, dtype=np.float64) + 0.5) * sy
    u, v = frame.grid(xs, ys)
    A = _soft_att(u, v, an) * np.float32(spec.vendor["soft_gain"])
    _add_gas(A, u, v, an, frame, sx, sy)
    tex = _bandpass_texture(rngs["texture"], shape, max(0.5, 0.45 / sx))
    shapes = _shapes(an)
    dens = an["bone_density"]  # osteoporotic ... dense bones
    k = an["k"]
    v_max = (spec.height * spec.spacing) / k + 200.0
    # midline structures
    r0, r1, c0, c1 = frame.bbox_px((-75.0, -230.0, 75.0, 12.0), sx, sy, shape)
    if r1 > r0 and c1 > c0:
        A[r0:r1, c0:c1] += dens * _midline_att(u[r0:r1, c0:c1], v[r0:r1, c0:c1], an, tex[r0:r1, c0:c1], shapes)
    fx_patch = None
    for s in (-1, +1):
        g = an["femur"][s]
        il = np.array(an["ilium"][s])
        a_hi = float(il[:, 0].max()) + 6.0
        v_lo = float(il[:, 1].min()) - 6.0
        box = (-2.0, v_lo, a_hi, 100.0) if s > 0 else (-a_hi, v_lo, 2.0, 100.0)
        r0, r1, c0, c1 = frame.bbox_px(box, sx, sy, shape)
        if r1 > r0 and c1 > c0:
            uu, vv = u[r0:r1, c0:c1], v[r0:r1, c0:c1]
            A[r0:r1, c0:c1] += dens * _innominate_att(s * uu, vv, g, an, tex[r0:r1, c0:c1], shapes)
        r0, r1, c0, c1 = frame.bbox_px(_femur_box_uv(g, s, v_max), sx, sy, shape)
        if not (r1 > r0 and c1 > c0):
            continue
        uu, vv = u[r0:r1, c0:c1], v[r0:r1, c0:c1]
        aa = s * uu
        fem = dens * _femur_att(aa, vv, g, tex[r0:r1, c0:c1], shapes)
        fem_intact = fem
        if s == fx_side_sign:
            fx = spec.fracture
            distal = 1.0 - _proximal_mask(aa, vv, g, fx)
            pivot, rot, (sn, st) = _fragment_transform(g, fx)
            F, e, m, _ = _fracture_line(g, fx)
            # inverse motion: q = R(-rot) (p - pivot - shift) + pivot
            shx = sn * m[0] + st * e[0]
            shy = sn * m[1] + st * e[1]
            px, py = aa - pivot[0] - shx, vv - pivot[1] - shy
            qa, qv = _rot(px, py, -rot)
            qa = qa + pivot[0]
            qv = qv + pivot[1]
            # texture moves with the fragment
            qu = s * qa
            ix, iy = frame.to_image(qu, qv)
            from scipy.ndimage import map_coordinates

            qtex = map_coordinates(tex, [iy / sy - 0.5, ix / sx - 0.5], order=1, mode="nearest").astype(np.float32)
            prox = dens * _femur_att(qa, qv, g, qtex, shapes) * _proximal_mask(qa, qv, g, fx)
            fem = fem * distal + prox
        A[r0:r1, c0:c1] += fem
        if s == fx_side_sign:
            fx_patch = (fem, fem_intact, (r0, r1, c0, c1))
    return A, fx_patch


def _equalize(A, vd, sx):
    """CR/DX-style processing: compress the large-scale dynamic range (label independent)."""
    from scipy.ndimage import gaussian_filter, zoom

    f = 8
    h, w = A.shape
    hc, wc = max(1, h // f), max(1, w // f)
    small = A[: hc * f, : wc * f].reshape(hc, f, wc, f).mean(axis=(1, 3))
    small = gaussian_filter(small, vd["eq_sigma"] / (sx * f), mode="nearest")
    big = zoom(small, (h / hc, w / wc), order=1, mode="nearest", grid_mode=True)
    big = big[:h, :w]
    if big.shape != A.shape:
        big = np.pad(big, ((0, h - big.shape[0]), (0, w - big.shape[1])), mode="edge")
    return big.astype(np.float32)


def _draw_marker(letter: str, height_px: int, boxed: bool) -> np.ndarray:
    """A lead side marker: stroke letter R or L (1.0 = lead), as float32 mask."""
    h = max(12, int(height_px))
    w = int(h * 0.72)
    pad = max(2, h // 6)
    img = Image.new("L", (w + 2 * pad, h + 2 * pad), 0)
    d = ImageDraw.Draw(img)
    lw = max(2, h // 7)
    x0, y0 = pad, pad
    x1, y1 = pad + w - lw, pad + h - lw
    if letter == "L":
        d.line([(x0, y0), (x0, y1), (x1, y1)], fill=255, width=lw, joint="curve")
    else:
        mid = y0 + (y1 - y0) * 0.5
        d.line([(x0, y1), (x0, y0), (x0 + (x1 - x0) * 0.6, y0)], fill=255, width=lw, joint="curve")
        d.arc([x0 + (x1 - x0) * 0.2, y0, x1, mid], start=-90, end=90, fill=255, width=lw)
        d.line([(x0, mid), (x0 + (x1 - x0) * 0.6, mid)], fill=255, width=lw)
        d.line([(x0 + (x1 - x0) * 0.45, mid), (x1, y1)], fill=255, width=lw)
    if boxed:
        d.rectangle([0, 0, img.width - 1, img.height - 1], outline=160, width=max(1, lw // 2))
    return np.asarray(img, dtype=np.float32) / 255.0


def _resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    if arr.shape == (height, width):
        return arr.copy()
    return np.array(Image.fromarray(arr, mode="F").resize((width, height), Image.BICUBIC), dtype=np.float32)


def _box_px(frame: _Frame, box_uv, spacing, width, height) -> Box:
    u0, v0, u1, v1 = box_uv
    pts = [frame.to_image(u, v) for u in (u0, u1) for v in (v0, v1)]
    xs = [p[0] / spacing for p in pts]
    ys = [p[1] / spacing for p in pts]
    x0 = min(max(0, math.floor(min(xs))), width - 1)
    y0 = min(max(0, math.floor(min(ys))), height - 1)
    x1 = max(min(width, math.ceil(max(xs))), x0 + 1)
    y1 = max(min(height, math.ceil(max(ys))), y0 + 1)
    return Box(float(x0), float(y0), float(x1), float(y1))


def render(spec: CaseSpec) -> Phantom:
    """Render a :class:`CaseSpec` to a :class:`Phantom` (standard orientation)."""
    rngs = _rngs(spec.seed, spec.index)  # fresh streams: texture / noise depend on nothing else
    an, vd = spec.anatomy, spec.vendor
    W, H, p = spec.width, spec.height, spec.spacing
    frame = _Frame(an)
    wl = min(W, _LOW_RES_WIDTH)
    hl = max(8, int(round(H * wl / W)))
    sx, sy = W * p / wl, H * p / hl
    fx = spec.fracture
    fx_sign = _SIDE_SIGN[fx.side] if fx is not None else None

    A, fx_patch = _render_low(spec, rngs, (hl, wl), sx, sy, fx_sign)
    regions_uv = {side: _region_box_uv(an["femur"][s], s) for side, s in _SIDE_SIGN.items()}
    # Everything global (equalisation, window) is computed from label-independent data: the
    # image with the fractured femur drawn intact, and outside both neck-trochanter regions.
    if fx is not None and fx_patch is not None:
        fem, fem_intact, (r0, r1, c0, c1) = fx_patch
        intact = A.copy()
        intact[r0:r1, c0:c1] += fem_intact - fem
    else:
        intact = A
    # soft-tissue contrast, equalisation, heel effect
    big = _equalize(intact, vd, sx)
    P = A - vd["equalize"] * big
    heel = (np.arange(hl, dtype=np.float32) / max(hl - 1, 1) - 0.5) * vd["heel"]
    P += heel[:, None]
    if vd["blur"] > 0.05:
        from scipy.ndimage import gaussian_filter

        P = gaussian_filter(P, vd["blur"] * 0.6 / sx * 1.0, mode="nearest")
    # window from label-independent pixels
    mask = np.ones(P.shape, bool)
    for box in regions_uv.values():
        r0, r1, c0, c1 = frame.bbox_px(box, sx, sy, P.shape)
        mask[r0:r1, c0:c1] = False
    Pi = intact - vd["equalize"] * big + heel[:, None]
    sample = Pi[mask][::3]
    lo, hi = np.percentile(sample, [vd["lo_pct"], vd["hi_pct"]])
    span = max(float(hi - lo), 1e-3)
    lo = float(lo) + vd["lo_shift"] * span
    hi = float(hi) + vd["hi_shift"] * span

    # ---- full resolution
    full = _resize(P.astype(np.float32), W, H)
    boxes: dict[str, Box] = {}
    if fx is not None:
        if fx_patch is None:  # cannot happen: the placement keeps both hips inside the image
            raise RuntimeError(f"phantom {spec.seed}/{spec.index}: the fractured hip is outside the image")
        g = an["femur"][fx_sign]
        F, e, m, half = _fracture_line(g, fx)
        prm = fx.params
        disp = abs(prm["rot"]) * 40.0 + abs(prm["shift_n"]) + abs(prm["shift_t"])
        margin = 4.0 + prm["width"] * 2 + disp
        pts = [(F[0] + e[0] * t_ + m[0] * d_, F[1] + e[1] * t_ + m[1] * d_)
               for t_ in (-half, half) for d_ in (-margin, margin)]
        aa = [q[0] for q in pts]
        vv_ = [q[1] for q in pts]
        # box of the fracture: the line within the bone, plus the displacement
        a_lo, a_hi = min(aa), max(aa)
        box_uv = tuple(sorted((fx_sign * a_lo, fx_sign * a_hi)))
        box_uv = (box_uv[0], min(vv_), box_uv[1], max(vv_))
        reg = regions_uv[fx.side]
        box_uv = (max(box_uv[0], reg[0]), max(box_uv[1], reg[1]), min(box_uv[2], reg[2]), min(box_uv[3], reg[3]))
        # draw the line at full resolution in its patch
        bx = _box_px(frame, box_uv, p, W, H)
        r0, r1, c0, c1 = int(bx.y0), int(bx.y1), int(bx.x0), int(bx.x1)
        xs = (np.arange(c0, c1, dtype=np.float64) + 0.5) * p
        ys = (np.arange(r0, r1, dtype=np.float64) + 0.5) * p
        uu, vv = frame.grid(xs, ys)
        aa = fx_sign * uu
        fem, _, (fr0, fr1, fc0, fc1) = fx_patch
        from scipy.ndimage import map_coordinates

        gy, gx = np.meshgrid(ys / sy - 0.5 - fr0, xs / sx - 0.5 - fc0, indexing="ij")
        bone = map_coordinates(fem, [gy, gx], order=1, mode="nearest").astype(np.float32)
        s_ = (aa - F[0]) * e[0] + (vv - F[1]) * e[1]
        d_ = (aa - F[0]) * m[0] + (vv - F[1]) * m[1] - _wiggle(s_, prm)
        ex0, ex1 = prm["extent"]
        tpos = (s_ / half + 1.0) * 0.5
        env = _smoothstep((tpos - ex0) * 12.0) * _smoothstep((ex1 - tpos) * 12.0)
        # the line is only within the femur: fade where the bone is thin (outside)
        in_bone = _smoothstep(bone * 12.0)
        line = _band(d_, prm["width"]) * env * in_bone
        delta = -prm["depth"] * line * bone
        if prm["impaction"] > 0:
            band = _band(d_ - (prm["width"] + 2.2), 1.6 + prm["width"]) * env * in_bone
            delta += prm["impaction"] * 0.8 * band * bone
        full[r0:r1, c0:c1] += delta
        boxes[fx.side] = bx
    # quantum noise (stronger where the image is bright), with a little detector blur
    nrng = rngs["noise"]
    noise = nrng.random((H, W), dtype=np.float32)
    noise += nrng.random((H, W), dtype=np.float32)
    noise -= 1.0
    noise *= (vd["noise"] * span * 2.0)
    scale = full - lo
    scale *= vd["noise_bone"] / span
    scale += 1.0
    np.clip(scale, 0.3, 3.0, out=scale)
    noise *= scale
    full += noise
    del noise, scale
    # lead marker (patient side chosen independent of the fracture)
    mk = vd["marker"]
    if mk is not None:
        letter = "R" if mk["letter_side"] == "right" else "L"
        mask_m = _draw_marker(letter, int(mk["height_mm"] / p), mk["boxed"])
        mh, mw = mask_m.shape
        # marker near the top corner on the side it names (standard orientation)
        xpos = mk["x"] * W if mk["letter_side"] == "right" else W - mk["x"] * W - mw
        x0, y0 = int(max(0, min(W - mw, xpos))), int(max(0, min(H - mh, mk["y"] * H)))
        sub = full[y0:y0 + mh, x0:x0 + mw]
        sub[...] = np.maximum(sub, lo + (hi - lo) * 1.3 * mask_m[: sub.shape[0], : sub.shape[1]])
    # window -> stored values via the vendor LUT
    lut, maxval = _tone_lut(vd)
    full -= lo
    full *= (_LUT_SIZE - 1) / (hi - lo)
    np.clip(full, 0, _LUT_SIZE - 1, out=full)
    pixels = lut[full.astype(np.uint16)]
    del full
    regions = {side: {"neck_trochanter": _box_px(frame, box, p, W, H)} for side, box in regions_uv.items()}
    co = vd.get("collimation")
    if co is not None:
        bg = 0 if (co["black"] != vd["mono1"]) else maxval  # black shutter or unexposed (white)
        # the collimator never cuts into the hips
        keep = [r["neck_trochanter"] for r in regions.values()]
        pad = int(8.0 / p)
        l = max(0, min(int(co["left"] * W), min(int(k.x0) for k in keep) - pad))
        r = max(0, min(int(co["right"] * W), W - max(int(k.x1) for k in keep) - pad))
        t = max(0, min(int(co["top"] * H), min(int(k.y0) for k in keep) - pad))
        b = max(0, min(int(co["bottom"] * H), H - max(int(k.y1) for k in keep) - pad))
        if l:
            pixels[:, :l] = bg
        if r:
            pixels[:, W - r:] = bg
        if t:
            pixels[:t, :] = bg
        if b:
            pixels[H - b:, :] = bg
    midline_x = frame.to_image(0.0, 0.0)[0] / p
    return Phantom(spec=spec, pixels=pixels, boxes=boxes, regions=regions, midline_x=midline_x)


def make_phantom(seed: int = 0, index: int = 0, **kwargs) -> Phantom:
    """Sample and render phantom ``index`` of run ``seed`` (keyword arguments: :func:`sample_case`)."""
    return render(sample_case(seed, index, **kwargs))


