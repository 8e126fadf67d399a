"""The phantom's anatomy as attenuation fields: the patient frame on the detector, the bones as\nshells (cortex around a textured core), soft tissue, bowel gas, and the fracture geometry."""

from __future__ import annotations

import math

import numpy as np

from hipcad.runtime.synth.cases import _Outline
from hipcad.runtime.synth.formats import MU_C, MU_S, MU_T
from hipcad.runtime.synth.geometry import _band, _circle, _ellipse, _rbox, _rot, _seg, _smin, _smoothstep

_SIDE_SIGN = {"right": -1, "left": +1}  # patient side -> sign of u in the standard orientation


class _Frame:
    """Maps between the patient frame (u, v in mm, scaled by k) and image millimetres."""

    def __init__(self, an: dict) -> None:
        self.k, self.cx, self.cy, self.th = an["k"], an["cx"], an["cy"], an["theta"]
        self.c, self.s = math.cos(self.th), math.sin(self.th)

    def to_image(self, u, v):
        return (self.cx + self.k * (self.c * u - self.s * v), self.cy + self.k * (self.s * u + self.c * v))

    def grid(self, xs, ys):
        """Patient coordinates of the grid xs (columns, mm) x ys (rows, mm), float32."""
        dx = ((xs - self.cx) / self.k).astype(np.float32)[None, :]
        dy = ((ys - self.cy) / self.k).astype(np.float32)[:, None]
        u = self.c * dx + self.s * dy
        v = -self.s * dx + self.c * dy
        return u.astype(np.float32), v.astype(np.float32)

    def bbox_px(self, box_uv, spacing_x, spacing_y, shape):
        """Pixel slice (rows, cols) covering a patient-frame box (u0, v0, u1, v1)."""
        u0, v0, u1, v1 = box_uv
        pts = [self.to_image(u, v) for u in (u0, u1) for v in (v0, v1)]
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        c0 = max(0, int(math.floor(min(xs) / spacing_x)))
        c1 = min(shape[1], int(math.ceil(max(xs) / spacing_x)) + 1)
        r0 = max(0, int(math.floor(min(ys) / spacing_y)))
        r1 = min(shape[0], int(math.ceil(max(ys) / spacing_y)) + 1)
        return r0, r1, c0, c1


def _femur_att(a, v, g, tex, shapes):
    H, rh, n, msup = g["H"], g["rh"], g["n"], g["msup"]
    ha = a - H[0]
    hv = v - H[1]
    dh = np.sqrt(ha * ha + hv * hv)
    sdf = _smin(dh - rh, shapes["femur", g["side_sign"]](a, v), 4.0)
    shaft, _, _, _ = _seg(a, v, g["S0"], g["S2"], g["sr"], g["sr"] * 0.95)
    sdf = np.minimum(sdf, shaft)
    s = (a - g["J"][0]) * g["ds"][0] + (v - g["J"][1]) * g["ds"][1]  # along the shaft
    wh = np.clip((1.05 * rh - dh) * (1.0 / (0.45 * rh)), 0.0, 1.0)  # inside the head
    wshaft = _smoothstep((s - 20.0) * (1.0 / 60.0))
    R = wh * rh + (1.0 - wh) * (16.0 + (g["sr"] - 16.0) * wshaft)
    inf = np.clip(-(ha * msup[0] + hv * msup[1]) * (1.0 / (0.55 * rh)), 0.0, 1.0) * (1.0 - wh) * (1.0 - wshaft)
    C = 1.2 + 2.4 * inf + 4.6 * _smoothstep((s - 25.0) * (1.0 / 70.0))
    wd = _ellipse(a, v, g["ward"], 12.0, 9.0, math.atan2(n[1], n[0]))
    rho = (0.85 - 0.2 * wh - 0.72 * _smoothstep((s - 25.0) * (1.0 / 55.0))) * (1.0 - 0.15 * _smoothstep(-wd * 0.12 + 0.5))
    att = _shell_field(sdf, R, C, rho, tex * (1.0 - 0.5 * wh), 0.2)
    if g["scar"] > 0:  # the physeal scar: a faint bright line across the head (both sides)
        off = (0.45 + g["scar_off"]) * rh
        dist = (ha + off * n[0]) * n[0] + (hv + off * n[1]) * n[1]
        inside = np.clip((rh - dh) * 0.5, 0.0, 1.0)
        att = att + (0.05 * g["scar"]) * _band(dist, 0.8) * inside
    return att


def _shell_field(sdf, R, C, rho, tex=None, tex_amp=0.0):
    """Projected attenuation of a shell: outer radius R, cortex C, trabecular core density rho."""
    R = np.maximum(R, 1.0)
    C = np.minimum(C, R * 0.8)
    dd = np.minimum(np.maximum(-sdf, 0.0), R)
    outer = 2.0 * np.sqrt(dd * (2.0 * R - dd))
    ri = R - C
    di = np.minimum(np.maximum(dd - C, 0.0), ri)
    inner = 2.0 * np.sqrt(di * (2.0 * ri - di))
    core = MU_T * rho * inner
    if tex is not None and tex_amp:
        core = core * (1.0 + tex_amp * tex)
    return MU_C * (outer - inner) + core


def _innominate_att(a, v, g, an, tex, shapes):
    H, rh = g["H"], g["rh"]
    ah = H[0]
    sdf = shapes["ilium", g["side_sign"]](a, v)
    wing = _smoothstep((-v - 25.0) * (1.0 / 45.0))
    ramus = _smoothstep((v - 12.0) * 0.1) * _smoothstep((ah - 20.0 - a) * 0.1)
    R = 8.5 - 3.0 * wing - 0.5 * ramus
    C = 1.7 - 0.5 * wing
    rho = 0.72 - 0.2 * wing - 0.1 * ramus
    att = _shell_field(sdf, R, C, rho, tex, 0.25)
    # the acetabulum: joint space (dark crescent) under the roof (sourcil, bright), wall lines,
    # teardrop, iliopectineal and ilioischial lines
    dx = a - H[0]
    dy = v - H[1]
    r = np.sqrt(dx * dx + dy * dy)
    ang = np.arctan2(dy, dx)
    lat = -(math.pi / 2 - g["ce"])
    roof = _smoothstep((lat - ang) * 3.0 + 0.3) * _smoothstep((ang + 2.5) * 3.0)
    att = att * (1.0 - 0.45 * _band(r - (rh + 1.6), 1.3) * roof)
    att = att + 0.20 * _band(r - (rh + 4.0), 1.5) * roof
    att = att + 0.06 * _band(r - (rh + 2.0), 1.0) * _smoothstep((ang - lat) * 2.0) * _smoothstep((0.9 - ang) * 2.0)
    td = _ellipse(a, v, (ah - rh - 9.0, H[1] + 10.0), 3.5, 9.0)
    att = att + 0.10 * an["teardrop"] * _band(td, 1.3)
    brim = _ellipse(a, v, (0.0, -26.0), 62.0, 53.0)
    att = att + 0.10 * _band(brim, 1.5) * _smoothstep((a - 22.0) * 0.15) * _smoothstep(-sdf * 0.5)
    il = _seg(a, v, (ah - 27.0, -40.0), (ah - 29.0, 30.0), 0.0, 0.0)[0]
    att = att + 0.05 * _band(il, 1.3) * _smoothstep(-sdf * 0.5)
    return att


def _midline_att(u, v, an, tex, shapes):
    att = _shell_field(shapes["sacrum"](u, v), 8.0, 1.3, 0.55, tex, 0.25)
    au = np.abs(u)
    for i in range(4):  # sacral foramina
        fc = (23.0 - 2.5 * i, -84.0 + 14.0 * i)
        att = att * (1.0 - 0.5 * _smoothstep(-_circle(au, v, fc, 5.0 - 0.7 * i) * 0.6 + 0.5))
    att = att + 0.04 * _band(u, 2.5) * _smoothstep((v + 92.0) * 0.1) * _smoothstep((-28.0 - v) * 0.1)
    # coccyx
    att = att + _shell_field(_seg(u, v, (0.0, -18.0), (0.0, 4.0), 5.0, 3.0)[0], 4.0, 1.2, 0.6)
    # L5 and L4: bodies, transverse processes, pedicles and spinous processes
    for lv, w in ((an["l5_v"], 25.0), (an["l5_v"] - 36.0, 24.0)):
        body = _rbox(u, v, (0.0, lv), w, 15.0, 4.0)
        tp = _seg(au, v, (20.0, lv - 2.0), (w + 13.0, lv - 6.0), 6.0, 4.0)[0]
        a2 = _shell_field(body, 12.0, 1.8, 0.45, tex, 0.2) + _shell_field(tp, 5.0, 1.0, 0.5)
        ped = _ellipse(au, v, (16.0, lv - 1.0), 4.5, 7.0)
        a2 = a2 + 0.05 * _band(ped, 1.2)
        a2 = a2 + 0.04 * _band(_ellipse(u, v, (0.0, lv + 4.0), 3.5, 8.5), 1.5)
        att = att + a2
    return att


def _shapes(an: dict) -> dict:
    """Rasterised outlines of one phantom (femora, ilia, sacrum)."""
    out = {"sacrum": _Outline(an["sacrum"])}
    for s in (-1, 1):
        out["femur", s] = _Outline(an["femur"][s]["outline"])
        fa, fb = an["foramen"]
        ah = an["femur"][s]["H"][0]
        t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        ca, sa = math.cos(math.radians(20.0)), math.sin(math.radians(20.0))
        hole = np.stack([ah - 44.0 + fa * np.cos(t) * ca - fb * np.sin(t) * sa,
                         45.0 + fa * np.cos(t) * sa + fb * np.sin(t) * ca], 1)
        out["ilium", s] = _Outline(an["ilium"][s], holes=[hole])
    return out


def _soft_att(u, v, an):
    a = an["body_a"] * (1.0 - 0.14 * np.clip((-v - 30.0) / 220.0, 0.0, 1.0))
    body = 2.0 * an["body_b"] * np.sqrt(np.clip(1.0 - (u / a) ** 2, 0.0, None))
    au = np.abs(u)
    r = an["thigh_r"]
    thigh = 2.0 * np.sqrt(np.clip(r * r - (au - an["thigh_c"]) ** 2, 0.0, None)) * (an["body_b"] / r) * 0.95
    w = _smoothstep((v - 40.0) / 70.0)
    return MU_S * (body * (1.0 - w) + thigh * w)


def _add_gas(A, u, v, an, frame, sx, sy):
    """Bowel gas: dark blobs over the abdomen and the pelvis."""
    for gu, gv, ra, rb, ang, depth in an["gas"]:
        r = max(ra, rb) + 4.0
        r0, r1, c0, c1 = frame.bbox_px((gu - r, gv - r, gu + r, gv + r), sx, sy, A.shape)
        if r1 > r0 and c1 > c0:
            e = _ellipse(u[r0:r1, c0:c1], v[r0:r1, c0:c1], (gu, gv), ra, rb, ang)
            A[r0:r1, c0:c1] -= (MU_S * 30.0 * depth) * _smoothstep(-e * 0.35 + 0.5)


def _bandpass_texture(rng, shape, sigma_px):
    noise = rng.standard_normal(shape, dtype=np.float32)
    from scipy.ndimage import gaussian_filter

    fine = gaussian_filter(noise, sigma_px)
    coarse = gaussian_filter(fine, sigma_px * 2.5)
    tex = fine - coarse
    tex *= 1.0 / (float(tex.std()) + 1e-6)
    return tex


def _fragment_transform(g, fx):
    """(pivot, rotation, shift) of the proximal fragment, in side coordinates."""
    p = fx.params
    return g["H"], p["rot"], (p["shift_n"], p["shift_t"])


def _fracture_line(g, fx):
    """Point F on the fracture line, unit direction e along it, normal m towards the head, half length."""
    p = fx.params
    H, n, rh = g["H"], g["n"], g["rh"]
    if fx.kind == "neck":
        t = rh * 0.8 + p["pos"] * (g["ln"] * 0.8 - rh * 0.8)
        F = (H[0] - t * n[0], H[1] - t * n[1])
        m = _rot(n[0], n[1], p["obliquity"])
        e = (-m[1], m[0])
        half = g["rn"] * 1.15
    else:
        # from the lateral cortex below the greater trochanter tip to the top of the lesser trochanter
        J, ds, lat, sr = g["J"], g["ds"], g["lat"], g["sr"]
        sa, wa = -22.0 + 25.0 * p["gt_t"], g["gt_w"] + 3.0
        sb, wb = g["lt_s"] - 6.0 + 8.0 * p["lt_t"], -sr - 5.0
        A = (J[0] + sa * ds[0] + wa * lat[0], J[1] + sa * ds[1] + wa * lat[1])
        B = (J[0] + sb * ds[0] + wb * lat[0], J[1] + sb * ds[1] + wb * lat[1])
        F = ((A[0] + B[0]) / 2, (A[1] + B[1]) / 2)
        L = math.hypot(B[0] - A[0], B[1] - A[1])
        e = ((B[0] - A[0]) / L, (B[1] - A[1]) / L)
        m = (e[1], -e[0])
        if m[0] * (H[0] - F[0]) + m[1] * (H[1] - F[1]) < 0:
            m = (-m[0], -m[1])
        half = L / 2 + 8.0
    return F, e, m, half


def _wiggle(s, p):
    out = 0.0
    for amp, lam, ph in p["wiggle"]:
        out = out + amp * np.sin(s * (2 * math.pi / lam) + ph)
    return out


def _proximal_mask(a, v, g, fx, soft=0.8):
    F, e, m, _ = _fracture_line(g, fx)
    s = (a - F[0]) * e[0] + (v - F[1]) * e[1]
    d = (a - F[0]) * m[0] + (v - F[1]) * m[1] - _wiggle(s, fx.params)
    mask = _smoothstep(d * (0.5 / soft) + 0.5)
    if fx.kind == "neck":  # the head fragment: the head and the neck up to the line, not the trochanter
        H = g["H"]
        dh = np.sqrt((a - H[0]) ** 2 + (v - H[1]) ** 2)
        near = np.maximum(_smoothstep((g["rh"] + 4.0 - dh) * 0.5), _smoothstep((g["rn"] * 1.3 - np.abs(s)) * 0.5))
        mask = mask * near
    return mask


def _region_box_uv(g, s):
    """Patient-frame box (u0, v0, u1, v1) of the head-neck-trochanter region of side sign s."""
    a0, v0, a1, v1 = g["box"]
    u0, u1 = sorted((s * (a0 - 6.0), s * (a1 + 6.0)))
    return (u0, v0 - 6.0, u1, v1 + 8.0)


def _femur_box_uv(g, s, v_max):
    a0, v0, a1, _ = g["box"]
    u0, u1 = sorted((s * (a0 - 10.0), s * (a1 + 25.0)))
    return (u0, v0 - 12.0, u1, v_max)

