"""Synthetic AP pelvis radiographs ("phantoms") with and without hip fractures.

For tests, demos, benchmarks and training the demo model. Nothing here is a patient: every
file says so (PatientName ``PHANTOM^<n>``, PatientID ``SYN<n>``, ImageComments and
DeidentificationMethod ``SYNTHETIC PHANTOM - not a patient``).

How a phantom is made
---------------------
The anatomy is a set of smooth signed-distance shapes in a patient frame in millimetres
(origin on the midline at the height of the femoral-head centres, ``u`` to the image right,
``v`` down), placed on the detector with a random scale, offset and tilt. Each bone is drawn as
the projection of a shell: a cortical rim (bright) around a trabecular core with a band-pass
texture; where bones overlap (femoral head in the acetabulum, sacrum over the ilia, ischium
over the lesser trochanter) their attenuations add up. The pelvic ring (iliac wings, sacrum
with its foramina, L4/L5, pubic rami, symphysis, obturator foramina, acetabular roofs,
teardrops, iliopectineal lines) and both proximal femora (head, neck at a neck-shaft angle of
124-136 degrees, greater and lesser trochanter, shaft with a thick cortex and a medullary
canal) sit in a soft-tissue envelope (abdomen, then two thighs) with bowel gas. This is all
drawn at a reduced resolution (at most 720 pixels across, about 0.55-0.65 mm per pixel),
then processed like a CR/DX
image (large-scale equalisation, heel effect, blur), upsampled to the full size, and the
full-resolution parts are added: fracture lines, quantum noise, the lead side marker and the
collimation edges. A look-up table maps the result to the stored values of the chosen "vendor"
(bit depth 8/10/12/14/16, gamma and S-curve, stored range and header window, MONOCHROME1/2).
A 2000-pixel-wide phantom takes about 0.15-0.2 s on one core, a 4892x4020 one about 0.6 s.

Fractures (about half of the images by default, at most one per image, random side):

* ``neck`` -- a femoral neck fracture: a thin dark irregular line across the neck (subcapital
  to basicervical, Pauwels obliquity), from barely visible to displaced: the head fragment
  rotates about the head centre (varus or valgus) and shifts, leaving a gap or an overlapping
  (impacted, sclerotic) band; some have a bright impaction band along the line.
* ``trochanteric`` -- an intertrochanteric line from the greater to the lesser trochanter,
  undisplaced or with the head-neck fragment rotated into varus.

Every random choice that is not the fracture (anatomy, position, exposure, noise, vendor
look, side marker, file format) is drawn from random streams that do not depend on whether
the image has a fracture, so :func:`make_phantom` with the same seed and index but a forced
``fracture="none"`` gives exactly the same image without the fracture; the pixels then differ
only inside the ``neck_trochanter`` region of the fractured side.

Geometry: a standard AP view has image left = patient right (PatientOrientation ``L\\F``).
About 10 % of the DICOM files are stored mirrored (PatientOrientation ``R\\F``, image left =
patient left); JPEG/PNG files are always standard. Boxes are written in the coordinates of
the stored pixels (see :mod:`hipcad.runtime.evaluation.dataset` for the folder format).

Command line: ``hipcad synth --out DIR --count N [--seed S] [--size WxH]
[--formats dicom,jpeg] [--fracture-rate 0.5]`` (:func:`synth_main`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from hipcad.runtime.evaluation.dataset import Box, ImageRecord, SideLabel, write_labels

__all__ = [
    "FORMATS",
    "DICOM_FORMATS",
    "DEFAULT_FORMAT_WEIGHTS",
    "FRACTURE_KINDS",
    "SYNTHETIC_NOTE",
    "CaseSpec",
    "FractureSpec",
    "Phantom",
    "sample_case",
    "render",
    "make_phantom",
    "write_phantom",
    "generate",
    "save_preview",
    "parse_formats",
    "patient_id",
    "build_parser",
    "synth_main",
]

# ----------------------------------------------------------------------------------------
# Output formats
# ----------------------------------------------------------------------------------------
# name -> (transfer syntax UID or None for a plain image file, file suffix)
FORMATS: dict[str, tuple[str | None, str]] = {
    "dcm-explicit": ("1.2.840.10008.1.2.1", ".dcm"),  # Explicit VR Little Endian
    "dcm-rle": ("1.2.840.10008.1.2.5", ".dcm"),  # RLE Lossless
    "dcm-jpegls": ("1.2.840.10008.1.2.4.80", ".dcm"),  # JPEG-LS Lossless
    "dcm-j2k": ("1.2.840.10008.1.2.4.90", ".dcm"),  # JPEG 2000 Lossless
    "dcm-jpeg": ("1.2.840.10008.1.2.4.50", ".dcm"),  # JPEG Baseline 8-bit (lossy)
    "jpeg": (None, ".jpg"),
    "png": (None, ".png"),
}
DICOM_FORMATS = tuple(name for name in FORMATS if name.startswith("dcm-"))
# The default mix: about 70 % DICOM, 30 % JPEG. PNG only when asked for.
DEFAULT_FORMAT_WEIGHTS: dict[str, float] = {
    "dcm-explicit": 0.25,
    "dcm-rle": 0.10,
    "dcm-jpegls": 0.10,
    "dcm-j2k": 0.15,
    "dcm-jpeg": 0.10,
    "jpeg": 0.30,
}
_FORMAT_ALIASES = {
    "dicom": DICOM_FORMATS,
    "dcm": DICOM_FORMATS,
    "all": tuple(DEFAULT_FORMAT_WEIGHTS),
    "explicit": ("dcm-explicit",),
    "rle": ("dcm-rle",),
    "jpegls": ("dcm-jpegls",),
    "jpeg-ls": ("dcm-jpegls",),
    "j2k": ("dcm-j2k",),
    "jpeg2000": ("dcm-j2k",),
    "jpg": ("jpeg",),
}
FRACTURE_KINDS = ("neck", "trochanteric")
SYNTHETIC_NOTE = "SYNTHETIC PHANTOM - not a patient"
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's prefix for generated UIDs
# Aspect ratios (width / height) of real pelvis films: 4892x4020, 3451x2836, 2039x1380, 43x35 cm.
_ASPECTS = (4892 / 4020, 3451 / 2836, 2039 / 1380, 43 / 35, 4 / 3)
_LOW_RES_WIDTH = 720  # the smooth anatomy is drawn at most this wide
_LUT_SIZE = 4096

# Attenuation per millimetre (arbitrary units of the log image): soft tissue, cortical bone
# and trabecular bone (both net of the soft tissue they replace).
MU_S = 0.0042
MU_C = 0.040
MU_T = 0.0125


def parse_formats(spec: str | list[str] | tuple[str, ...] | dict | None) -> dict[str, float]:
    """Turn ``"dicom,jpeg"`` (or a list of names, or a name -> weight dict) into format weights.

    Names: the keys of :data:`FORMATS` plus the aliases ``dicom`` (every DICOM transfer
    syntax), ``all`` (the default mix), ``explicit``, ``rle``, ``jpegls``, ``j2k``, ``jpg``.
    A selected format keeps its default weight (``png``: 0.1), so ``dicom,jpeg`` is the
    default 70/30 mix.
    """
    if spec is None:
        return dict(DEFAULT_FORMAT_WEIGHTS)
    if isinstance(spec, dict):
        weights = {str(k): float(v) for k, v in spec.items()}
        unknown = [k for k in weights if k not in FORMATS]
        if unknown:
            raise ValueError(f"unknown format(s) {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    else:
        names = spec.split(",") if isinstance(spec, str) else list(spec)
        weights = {}
        for raw in names:
            name = raw.strip().lower()
            if not name:
                continue
            expanded = _FORMAT_ALIASES.get(name, (name,))
            for fmt in expanded:
                if fmt not in FORMATS:
                    raise ValueError(
                        f"unknown format {raw.strip()!r}; known: {', '.join(list(FORMATS) + list(_FORMAT_ALIASES))}"
                    )
                weights[fmt] = DEFAULT_FORMAT_WEIGHTS.get(fmt, 0.1)
    total = sum(w for w in weights.values() if w > 0)
    if not weights or total <= 0:
        raise ValueError("no output format selected")
    return {k: w / total for k, w in weights.items() if w > 0}


# ----------------------------------------------------------------------------------------
# Small geometry helpers (all vectorised, float32)
# ----------------------------------------------------------------------------------------
def _rot(x: float, y: float, ang: float) -> tuple[float, float]:
    c, s = math.cos(ang), math.sin(ang)
    return c * x - s * y, s * x + c * y


def _seg(px, py, a, b, ra, rb):
    """Tapered capsule from a (radius ra) to b (radius rb): (approximate sdf, t along, qx, qy)."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    l2 = dx * dx + dy * dy
    t = ((px - ax) * dx + (py - ay) * dy) * (1.0 / l2)
    np.clip(t, 0.0, 1.0, out=t)
    qx = px - ax - t * dx
    qy = py - ay - t * dy
    d = np.sqrt(qx * qx + qy * qy)
    return d - (ra + (rb - ra) * t), t, qx, qy


def _circle(px, py, c, r):
    dx = px - c[0]
    dy = py - c[1]
    return np.sqrt(dx * dx + dy * dy) - r


def _ellipse(px, py, c, ax, ay, ang=0.0):
    """Approximate signed distance to a rotated ellipse (semi-axes ax, ay)."""
    ca, sa = math.cos(ang), math.sin(ang)
    x = px - c[0]
    y = py - c[1]
    qx = (ca * x + sa * y) * (1.0 / ax)
    qy = (-sa * x + ca * y) * (1.0 / ay)
    k0 = np.sqrt(qx * qx + qy * qy)
    k1 = np.sqrt((qx * (1.0 / ax)) ** 2 + (qy * (1.0 / ay)) ** 2) + 1e-6
    return k0 * (k0 - 1.0) / k1


def _rbox(px, py, c, hx, hy, r, ang=0.0):
    ca, sa = math.cos(ang), math.sin(ang)
    x = px - c[0]
    y = py - c[1]
    qx = np.abs(ca * x + sa * y) - (hx - r)
    qy = np.abs(-sa * x + ca * y) - (hy - r)
    out = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return out + np.minimum(np.maximum(qx, qy), 0) - r


def _smin(a, b, k):
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _band(dist, width):
    return np.exp(-((dist * (1.0 / width)) ** 2))


# ----------------------------------------------------------------------------------------
# Random case description
# ----------------------------------------------------------------------------------------
@dataclass
class FractureSpec:
    side: str  # patient side: "right" | "left"
    kind: str  # "neck" | "trochanteric"
    subtlety: float  # 0 = obvious ... 1 = barely visible
    params: dict = field(default_factory=dict)


@dataclass
class CaseSpec:
    seed: int
    index: int
    width: int
    height: int
    spacing: float  # mm per stored pixel
    anatomy: dict
    vendor: dict
    fracture: FractureSpec | None


def _rngs(seed: int, index: int) -> dict[str, np.random.Generator]:
    ss = np.random.SeedSequence(entropy=int(seed) & ((1 << 128) - 1), spawn_key=(int(index),))
    names = ("anatomy", "fracture", "vendor", "noise", "texture")
    return {n: np.random.default_rng(s) for n, s in zip(names, ss.spawn(len(names)))}


def _sample_size(rng: np.random.Generator, size: tuple[int, int] | None) -> tuple[int, int]:
    if size is not None:
        w, h = int(size[0]), int(size[1])
        if w < 64 or h < 64:
            raise ValueError(f"phantom size {w}x{h} is too small (at least 64x64)")
        return w, h
    w = int(rng.integers(1400, 2401))
    aspect = float(rng.choice(_ASPECTS)) * float(rng.uniform(0.98, 1.02))
    return w, max(64, int(round(w / aspect)))


def _catmull_rom(points, samples: int = 6) -> np.ndarray:
    """A closed Catmull-Rom curve through ``points`` (N x 2), ``samples`` points per segment."""
    p = np.asarray(points, dtype=np.float64)
    p0, p1, p2, p3 = np.roll(p, 1, 0), p, np.roll(p, -1, 0), np.roll(p, -2, 0)
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[None, :, None]
    t2, t3 = t * t, t * t * t
    out = 0.5 * ((2 * p1[:, None]) + (-p0 + p2)[:, None] * t + (2 * p0 - 5 * p1 + 4 * p2 - p3)[:, None] * t2
                 + (-p0 + 3 * p1 - 3 * p2 + p3)[:, None] * t3)
    return out.reshape(-1, 2)


class _Outline:
    """Signed distance (mm) to a smooth closed outline, rasterised once and sampled bilinearly."""

    def __init__(self, points, res: float = 0.7, pad: float = 14.0, smooth: bool = True, holes=()) -> None:
        from scipy.ndimage import distance_transform_edt

        pts = _catmull_rom(points) if smooth else np.asarray(points, dtype=np.float64)
        self.res = res
        self.origin = pts.min(axis=0) - pad
        size = np.ceil((pts.max(axis=0) + pad - self.origin) / res).astype(int) + 1
        img = Image.new("L", (int(size[0]), int(size[1])), 0)
        draw = ImageDraw.Draw(img)
        draw.polygon([tuple(q) for q in ((pts - self.origin) / res - 0.5)], fill=1)
        for hole in holes:
            draw.polygon([tuple(q) for q in ((np.asarray(hole) - self.origin) / res - 0.5)], fill=0)
        inside = np.asarray(img, dtype=bool)
        # one distance transform to the boundary pixels, then the sign
        edge = np.zeros_like(inside)
        dx = inside[:, 1:] != inside[:, :-1]
        dy = inside[1:, :] != inside[:-1, :]
        edge[:, 1:] |= dx
        edge[:, :-1] |= dx
        edge[1:, :] |= dy
        edge[:-1, :] |= dy
        dist = distance_transform_edt(~edge).astype(np.float32) + 0.5
        from scipy.ndimage import gaussian_filter

        # a light blur removes the staircase of the rasterised outline
        self.sdf = gaussian_filter(np.where(inside, -dist, dist) * np.float32(res), 1.0)

    def __call__(self, a, v):
        from scipy.ndimage import map_coordinates

        ri = (v - self.origin[1]) * (1.0 / self.res) - 0.5
        ci = (a - self.origin[0]) * (1.0 / self.res) - 0.5
        return map_coordinates(self.sdf, [ri, ci], order=1, mode="nearest").astype(np.float32)


def _sample_femur(rng, base: dict, side_sign: int) -> dict:
    """Femur (and acetabulum) geometry in side coordinates (a = lateral distance, v down)."""
    j = lambda s: float(rng.normal(0.0, s))  # noqa: E731 - per-side asymmetry
    ah = base["ah"] + j(1.5)
    vh = base["vh"] + j(1.2)
    rh = base["rh"] + j(0.4)
    nsa = math.radians(base["nsa"] + j(1.5))
    phi = math.radians(base["phi"] + j(0.8))
    ln = base["ln"] * (1.0 + j(0.03)) * base["rot_factor"]
    sr = base["shaft_r"] + j(0.3)
    H = (ah, vh)
    ds = (-math.sin(phi), math.cos(phi))  # shaft axis, downwards
    lat = (math.cos(phi), math.sin(phi))  # across the shaft, lateral
    n = (-math.sin(phi + nsa), math.cos(phi + nsa))  # neck axis, towards the head
    msup = (-n[1], n[0])  # across the neck, superior (lateral-up)
    J = (H[0] - ln * n[0], H[1] - ln * n[1])  # neck axis meets the shaft axis

    def nk(t, w):
        return (H[0] - t * n[0] + w * msup[0], H[1] - t * n[1] + w * msup[1])

    def sh(s, w):
        return (J[0] + s * ds[0] + w * lat[0], J[1] + s * ds[1] + w * lat[1])

    waist = base["neck_ratio"] + j(0.01)
    gt_h = base["gt_h"] + j(1.5)
    gt_w = base["gt_w"] + j(1.0)
    lt_s = base["lt_s"] + j(1.5)
    ltp = base["lt_prom"] * (1.0 + j(0.05))
    outline = [
        nk(0.35 * rh, 0.62 * rh), nk(0.95 * rh, 0.72 * rh), nk(1.28 * rh, waist * rh), sh(-0.68 * gt_h, 2.0), sh(-gt_h + 2.0, 8.0),
        sh(-gt_h, 15.0), sh(-gt_h + 8.0, gt_w), sh(-14.0, gt_w + 1.0), sh(14.0, sr + 2.5), sh(60.0, sr + 0.5),
        sh(115.0, sr), sh(115.0, -sr), sh(60.0, -sr - 0.3), sh(lt_s + 9.0, -sr - 1.0),
        sh(lt_s + 1.0, -sr - 9.5 * ltp), sh(lt_s - 7.0, -sr - 6.0 * ltp), sh(4.0, -sr - 4.5),
        nk(1.28 * rh, -waist * rh), nk(0.95 * rh, -0.74 * rh), nk(0.35 * rh, -0.62 * rh),
    ]
    pts = np.array(outline)
    return dict(
        H=H, rh=rh, n=n, msup=msup, ds=ds, lat=lat, J=J, ln=ln, sr=sr, rn=waist * rh, lt_s=lt_s,
        outline=outline, gt_w=gt_w, S0=sh(100.0, 0.0), S2=sh(900.0, 0.0),
        gt_tip=sh(-gt_h, 15.0), lt_tip=sh(lt_s + 1.0, -sr - 9.5 * ltp),
        ward=nk(0.78 * ln, -0.05 * rh),
        box=(float(min(pts[:, 0].min(), ah - rh)), float(min(pts[:, 1].min(), vh - rh)),
             float(pts[:, 0].max()), float(sh(lt_s + 12.0, 0.0)[1])),
        scar=base["scar"] * float(rng.uniform(0.6, 1.0)), scar_off=float(rng.uniform(0.0, 0.2)),
        ce=math.radians(base["ce"] + j(2.0)), side_sign=side_sign,
    )


# The outline of a standard innominate bone (ilium, ischium, pubis), side coordinates (mm),
# from the top of the sacro-iliac joint over the iliac crest, the anterior spines, the lateral
# acetabulum, the ischial tuberosity, the inferior ramus, the symphysis, the superior ramus and
# back along the pelvic brim. The obturator foramen is a hole in it.
_INNOMINATE = [
    (40, -98), (50, -117), (72, -128), (100, -126), (124, -114), (140, -94), (146, -74), (139, -60),
    (133, -50), (127, -36), (119, -22), (116, -5), (109, 10), (97, 24), (90, 40), (87, 55), (83, 68),
    (77, 78), (68, 83), (56, 81), (44, 76), (30, 69), (16, 64), (None, 58), (None, 40), (None, 22), (12, 17),
    (26, 15), (44, 9), (58, 0), (60, -18), (56, -36), (49, -52), (43, -68), (40, -82),
]
# Right half of the sacrum outline (u, v); mirrored for the left half.
_SACRUM = [(0, -95), (22, -97), (40, -103), (52, -99), (55, -86), (51, -68), (42, -54), (30, -42),
           (19, -31), (11, -22), (5, -17)]


def _innominate_points(rng, ah: float, flare: float, height: float, gap: float) -> list[tuple[float, float]]:
    out = []
    for a, v in _INNOMINATE:
        a2 = gap + 0.5 if a is None else float(a)
        v2 = float(v)
        if v2 < -30:  # the wing: flare and height
            a2 = 40.0 + (a2 - 40.0) * flare
            v2 = -30.0 + (v2 + 30.0) * height
        w = float(np.clip((a2 - 40.0) / 50.0, 0.0, 1.0))
        jit = 0.0 if a is None else 1.0
        out.append((a2 + (ah - 88.0) * w + float(rng.normal(0, jit)), v2 + float(rng.normal(0, jit))))
    return out


def _sample_anatomy(rng: np.random.Generator, w_mm: float, h_mm: float) -> dict:
    k = float(rng.uniform(0.9, 1.07))  # patient size
    base = dict(
        ah=float(rng.normal(88.0, 3.0)),
        vh=0.0,
        rh=float(rng.normal(24.0, 1.2)),
        nsa=float(rng.uniform(124.0, 136.0)),
        phi=float(rng.uniform(4.0, 9.0)),
        ln=float(rng.uniform(54.0, 62.0)),
        rot_factor=float(rng.uniform(0.9, 1.04)),  # projected neck length (hip rotation)
        lt_prom=float(rng.uniform(0.75, 1.25)),
        neck_ratio=float(rng.uniform(0.6, 0.68)),
        shaft_r=float(rng.uniform(13.0, 15.5)),
        gt_h=float(rng.uniform(38.0, 46.0)),
        gt_w=float(rng.uniform(22.0, 27.0)),
        lt_s=float(rng.uniform(26.0, 34.0)),
        scar=float(rng.uniform(0.0, 1.0)) if rng.random() < 0.6 else 0.0,
        ce=float(rng.uniform(25.0, 38.0)),
    )
    fem = {-1: _sample_femur(rng, base, -1), +1: _sample_femur(rng, base, +1)}
    flare, height = float(rng.uniform(0.88, 1.1)), float(rng.uniform(0.9, 1.08))
    gap = float(rng.uniform(1.5, 3.0))  # half the width of the symphysis
    ilium = {s: _innominate_points(rng, fem[s]["H"][0], flare, height, gap) for s in (-1, 1)}
    sw = float(rng.uniform(0.9, 1.08))
    sacrum_half = [(u * sw + float(rng.normal(0, 0.6)), v + float(rng.normal(0, 0.6))) for u, v in _SACRUM]
    sacrum = sacrum_half + [(-u, v) for u, v in reversed(sacrum_half)]
    # placement: head centres at 45-56 % of the height, pelvis off-centre up to ~12 % of the width
    half_extent = k * (max(f["box"][2] for f in fem.values()) + 6.0)
    max_off = max(0.0, min(0.12 * w_mm, w_mm / 2.0 - half_extent))
    cx = w_mm / 2.0 + float(rng.uniform(-max_off, max_off))
    cy_lo, cy_hi = 0.45 * h_mm, min(0.56 * h_mm, h_mm - 125.0 * k)
    cy = float(rng.uniform(cy_lo, max(cy_lo, cy_hi)))
    tilt = float(rng.uniform(-4.0, 4.0)) if rng.random() < 0.5 else float(rng.uniform(-0.7, 0.7))
    gas = []
    for _ in range(int(rng.integers(2, 12))):
        gas.append((float(rng.uniform(-115, 115)), float(rng.uniform(-230, -15)),
                    float(rng.uniform(4, 22)), float(rng.uniform(4, 16)), float(rng.uniform(0, math.pi)),
                    float(rng.uniform(0.3, 1.0))))
    return dict(
        k=k, cx=cx, cy=cy, theta=math.radians(tilt), femur=fem, base=base, ilium=ilium, sacrum=sacrum,
        body_a=float(rng.uniform(175.0, 220.0)), body_b=float(rng.uniform(85.0, 140.0)),
        thigh_r=float(rng.uniform(85.0, 105.0)), thigh_c=float(rng.uniform(80.0, 100.0)),
        gas=gas, l5_v=float(rng.uniform(-134.0, -124.0)),
        foramen=(float(rng.uniform(16.0, 19.0)), float(rng.uniform(22.0, 26.0))),
        symph_gap=gap, teardrop=float(rng.uniform(0.6, 1.2)),
        bone_density=float(rng.uniform(0.8, 1.15)),
    )


def _sample_fracture(rng: np.random.Generator, rate: float, fracture: str, side: str) -> FractureSpec | None:
    # Always draw the same amount of randomness so that forcing the fracture changes nothing else.
    u_frac, u_side, u_kind, subtlety = rng.random(4)
    if fracture == "random":
        if u_frac >= rate:
            return None
        kind = "neck" if u_kind < 0.6 else "trochanteric"
    elif fracture == "none":
        return None
    elif fracture in FRACTURE_KINDS:
        kind = fracture
    else:
        raise ValueError(f"fracture must be 'random', 'none' or one of {FRACTURE_KINDS}, not {fracture!r}")
    if side == "random":
        side = "right" if u_side < 0.5 else "left"
    elif side not in ("right", "left"):
        raise ValueError(f"side must be 'random', 'right' or 'left', not {side!r}")
    subtlety = float(subtlety)
    p: dict = {}
    obvious = 1.0 - subtlety
    if kind == "neck":
        p["pos"] = float(rng.uniform(0.1, 0.75))  # subcapital ... basicervical
        p["obliquity"] = math.radians(float(rng.uniform(-12.0, 28.0)))
        displaced = rng.random() < 0.75 * obvious + 0.05
        p["rot"] = math.radians(float(rng.uniform(6.0, 22.0)) * obvious * float(rng.choice([-1.0, 1.0]))) if displaced else math.radians(float(rng.uniform(-1.5, 1.5)))
        p["shift_n"] = float(rng.uniform(-4.5, 3.0)) * obvious if displaced else float(rng.uniform(-0.6, 0.3))
        p["shift_t"] = float(rng.uniform(-4.0, 4.0)) * obvious if displaced else 0.0
        p["impaction"] = float(rng.uniform(0.25, 0.6)) if rng.random() < 0.35 else 0.0
    else:
        p["gt_t"] = float(rng.uniform(0.15, 0.45))
        p["lt_t"] = float(rng.uniform(-0.1, 0.3))
        displaced = rng.random() < 0.6 * obvious + 0.05
        p["rot"] = -math.radians(float(rng.uniform(4.0, 14.0)) * obvious) if displaced else math.radians(float(rng.uniform(-1.0, 1.0)))
        p["shift_n"] = float(rng.uniform(-3.0, 1.0)) * obvious if displaced else 0.0
        p["shift_t"] = float(rng.uniform(-2.0, 2.0)) * obvious if displaced else 0.0
        p["impaction"] = float(rng.uniform(0.2, 0.45)) if rng.random() < 0.2 else 0.0
    p["width"] = float(rng.uniform(0.45, 0.75) + 0.55 * obvious)  # half-width of the line, mm
    p["depth"] = float(np.clip(0.95 - 0.55 * subtlety + rng.normal(0.0, 0.05), 0.3, 0.98))
    p["wiggle"] = [(float(rng.uniform(0.08, 0.3)) * (j + 1), float(rng.uniform(6.0, 10.0)) * (j + 1) ** 1.5,
                    float(rng.uniform(0, 2 * math.pi))) for j in range(3)]
    # how much of the width the line crosses (incomplete lines for some subtle ones)
    p["extent"] = (float(rng.uniform(0.0, 0.35)) * subtlety, 1.0 - float(rng.uniform(0.0, 0.35)) * subtlety)
    p["displaced"] = bool(displaced)
    return FractureSpec(side=side, kind=kind, subtlety=subtlety, params=p)


def _sample_vendor(rng: np.random.Generator, formats: dict[str, float], mirror_rate: float) -> dict:
    names = list(formats)
    fmt = names[int(rng.choice(len(names), p=np.array([formats[n] for n in names])))]
    bits = int(rng.choice([8, 10, 12, 12, 14, 16]))
    u = rng.random(12)
    if fmt in ("dcm-jpeg", "jpeg"):
        bits = 8
    elif fmt == "png":
        bits = 8 if u[0] < 0.5 else 16
    is_dicom = fmt.startswith("dcm-")
    kind = ("DX", "CR", "SC")[int(rng.choice(3, p=[0.5, 0.35, 0.15]))]
    mono1 = is_dicom and fmt != "dcm-jpeg" and u[1] < 0.25
    mirrored = is_dicom and u[2] < mirror_rate
    maxval = (1 << bits) - 1
    if bits == 8:
        lo_s, hi_s = 0.0, 255.0
    else:
        lo_s = float(rng.uniform(0.0, 0.12)) * maxval
        hi_s = float(rng.uniform(0.8, 1.0)) * maxval
    collim = None
    if u[3] < 0.4:
        collim = dict(
            left=float(rng.uniform(0.0, 0.05)), right=float(rng.uniform(0.0, 0.05)),
            top=float(rng.uniform(0.0, 0.08)), bottom=float(rng.uniform(0.0, 0.05)),
            black=bool(u[4] < 0.5),
        )
    else:
        rng.random(4)  # keep the stream aligned
    return dict(
        format=fmt, bits=bits, mono1=bool(mono1), mirrored=bool(mirrored), kind=kind,
        stored_range=(lo_s, hi_s),
        window_scale=float(rng.uniform(0.92, 1.05)),
        gamma=float(rng.uniform(0.75, 1.35)), s_curve=float(rng.uniform(0.0, 0.6)),
        lo_pct=float(rng.uniform(0.2, 3.0)), hi_pct=float(rng.uniform(99.5, 99.95)),
        lo_shift=float(rng.uniform(-0.08, 0.06)), hi_shift=float(rng.uniform(0.0, 0.15)),
        equalize=float(rng.uniform(0.35, 0.75)), eq_sigma=float(rng.uniform(12.0, 30.0)),
        soft_gain=float(rng.uniform(0.7, 1.5)),
        heel=float(rng.uniform(-0.06, 0.06)), blur=float(rng.uniform(0.0, 0.9)),
        noise=float(rng.uniform(0.004, 0.03)), noise_bone=float(rng.uniform(0.3, 1.2)),
        marker=dict(
            letter_side="right" if u[5] < 0.75 else "left",  # patient side the lead marker shows
            x=float(rng.uniform(0.03, 0.14)), y=float(rng.uniform(0.03, 0.2)),
            height_mm=float(rng.uniform(12.0, 22.0)), boxed=bool(u[6] < 0.5),
        ) if u[7] < 0.85 else None,
        collimation=collim,
        jpeg_quality=int(rng.integers(82, 97)),
        rescale=bool(kind == "CR" and u[8] < 0.5),
        voi_in_header=bool(bits > 8 or u[9] < 0.5),
    )


def sample_case(
    seed: int = 0,
    index: int = 0,
    *,
    size: tuple[int, int] | None = None,
    fracture_rate: float = 0.5,
    fracture: str = "random",
    side: str = "random",
    formats: str | list | dict | None = None,
    mirror_rate: float = 0.1,
) -> CaseSpec:
    """Draw every random parameter of phantom ``index`` of the run ``seed``."""
    rngs = _rngs(seed, index)
    width, height = _sample_size(rngs["anatomy"], size)
    # field of view: 380-460 mm across, enough height for the hips and the lesser trochanters
    w_mm = float(rngs["anatomy"].uniform(380.0, 460.0))
    w_mm = max(w_mm, 250.0 * width / height)
    spacing = w_mm / width
    anatomy = _sample_anatomy(rngs["anatomy"], w_mm, height * spacing)
    fx = _sample_fracture(rngs["fracture"], float(fracture_rate), fracture, side)
    vendor = _sample_vendor(rngs["vendor"], parse_formats(formats), float(mirror_rate))
    return CaseSpec(seed=int(seed), index=int(index), width=width, height=height, spacing=spacing,
                    anatomy=anatomy, vendor=vendor, fracture=fx)


# ----------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------
# Writing files
# ----------------------------------------------------------------------------------------
_SOP_CLASSES = {
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
    "SC": "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
}
_MODELS = {"DX": "PHANTOM DR-1", "CR": "PHANTOM CR-2", "SC": "PHANTOM FILM DIGITIZER"}


def _uid(seed: int, index: int, what: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_PREFIX, entropy_srcs=["hipcad-synth", str(seed), str(index), what]))


def patient_id(index: int) -> str:
    return f"SYN{index:05d}"


def default_name(index: int, fmt: str) -> str:
    return f"syn_{index:05d}{FORMATS[fmt][1]}"


def _dicom_bytes(ph: Phantom, pixels: np.ndarray, fmt: str, mirrored: bool, vendor: dict | None = None) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

    spec, vd = ph.spec, vendor or ph.vendor
    seed, index = spec.seed, spec.index
    kind = vd["kind"]
    ts = FORMATS[fmt][0]
    bits = vd["bits"]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASSES[kind]
    meta.MediaStorageSOPInstanceUID = _uid(seed, index, "sop")
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "HIPCAD_SYNTH"
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    day = date(2024, 1, 1) + timedelta(days=(seed * 7919 + index * 13) % 700)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = {"DX": ["DERIVED", "PRIMARY"], "CR": ["ORIGINAL", "PRIMARY"], "SC": ["DERIVED", "SECONDARY"]}[kind]
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = day.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{8 + index % 10:02d}{(index * 7) % 60:02d}00"
    ds.AccessionNumber = f"SYNACC{index:05d}"
    ds.Modality = "CR" if kind == "CR" else "DX"
    if kind == "SC":
        ds.ConversionType = "WSD"
    ds.Manufacturer = "hipcad synth"
    ds.ManufacturerModelName = _MODELS[kind]
    ds.InstitutionName = "SYNTHETIC"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "SYNTHETIC PELVIS AP"
    ds.SeriesDescription = "PELVIS AP (PHANTOM)"
    ds.PatientName = f"PHANTOM^{index}"
    ds.PatientID = patient_id(index)
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = f"{SYNTHETIC_NOTE} (hipcad synth)"
    ds.ImageComments = SYNTHETIC_NOTE
    ds.BodyPartExamined = "PELVIS"
    ds.ViewPosition = "AP"
    ds.StudyInstanceUID = _uid(seed, index, "study")
    ds.SeriesInstanceUID = _uid(seed, index, "series")
    ds.StudyID = f"{index % 100000}"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["R", "F"] if mirrored else ["L", "F"]
    if kind == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.BurnedInAnnotation = "NO"
    spacing = f"{spec.spacing:.6f}".rstrip("0")
    if kind in ("DX", "CR"):
        ds.ImagerPixelSpacing = [spacing, spacing]
    if kind in ("CR", "SC") or index % 2:
        ds.PixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if vd["mono1"] else "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if vd["voi_in_header"]:
        center, width = _window(vd)
        ds.WindowCenter = f"{center:.1f}"
        ds.WindowWidth = f"{width:.1f}"
        ds.WindowCenterWidthExplanation = "SYNTH"
    if vd["rescale"]:
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
    if fmt == "dcm-jpeg":
        buf = BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(buf, format="JPEG", quality=vd["jpeg_quality"])
        frame = buf.getvalue()
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.LossyImageCompressionRatio = f"{pixels.nbytes / len(frame):.2f}"
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        meta.TransferSyntaxUID = ts
    elif fmt == "dcm-explicit":
        data = np.ascontiguousarray(pixels, dtype="<u2" if bits > 8 else np.uint8).tobytes()
        if len(data) % 2:
            data += b"\0"
        ds.PixelData = data
        ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    else:
        arr = np.ascontiguousarray(pixels)
        plugin = {"dcm-rle": "pylibjpeg", "dcm-jpegls": "pyjpegls", "dcm-j2k": "pylibjpeg"}[fmt]
        try:
            ds.compress(ts, arr, encoding_plugin=plugin, generate_instance_uid=False)
        except (RuntimeError, ValueError):  # that plugin is missing: let pydicom pick one
            ds.compress(ts, arr, generate_instance_uid=False)
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_phantom(ph: Phantom, out_dir: str | os.PathLike, name: str | None = None, fmt: str | None = None) -> ImageRecord:
    """Write a phantom as a file in ``out_dir`` and return its dataset record.

    ``fmt`` (default: the phantom's own) is a key of :data:`FORMATS`. DICOM files drawn as
    mirrored are stored flipped left-right with PatientOrientation ``R\\F``; the boxes of the
    record are in the coordinates of the pixels as written.
    """
    fmt = fmt or ph.vendor["format"]
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    is_dicom = fmt.startswith("dcm-")
    out_dir = Path(out_dir)
    name = name or default_name(ph.spec.index, fmt)
    path = out_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = ph.pixels
    vendor = ph.vendor
    need8 = fmt in ("dcm-jpeg", "jpeg") or (fmt == "png" and vendor["bits"] <= 8)
    if (need8 and (pixels.dtype != np.uint8 or vendor["mono1"])) or (not is_dicom and vendor["mono1"]):
        # a format asked for explicitly that cannot hold these stored values: write what a viewer shows
        pixels = ph.display()
        vendor = dict(vendor, bits=8, mono1=False, stored_range=(0.0, 255.0), window_scale=1.0)
    mirrored = is_dicom and ph.vendor["mirrored"]
    width = pixels.shape[1]
    boxes, regions = dict(ph.boxes), {s: dict(r) for s, r in ph.regions.items()}
    if mirrored:
        pixels = pixels[:, ::-1]
        boxes = {s: b.mirrored(width) for s, b in boxes.items()}
        regions = {s: {k: b.mirrored(width) for k, b in r.items()} for s, r in regions.items()}
    if is_dicom:
        data = _dicom_bytes(ph, pixels, fmt, mirrored, vendor)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    else:
        img = Image.fromarray(np.ascontiguousarray(pixels))
        tmp = path.with_name(path.name + ".tmp")
        if fmt == "jpeg":
            img.save(tmp, format="JPEG", quality=ph.vendor["jpeg_quality"])
        else:
            img.save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
    sides = {s: SideLabel(s in boxes, boxes.get(s)) for s in ("right", "left")}
    return ImageRecord(file=Path(name).as_posix(), path=path, patient_id=patient_id(ph.spec.index), sides=sides,
                       regions=regions)


def save_preview(ph: Phantom, path: str | os.PathLike, width: int = 1000, boxes: bool = True) -> Path:
    """A downscaled RGB PNG of a phantom (standard orientation) with its boxes drawn."""
    img = Image.fromarray(ph.display()).convert("RGB")
    if boxes:
        draw = ImageDraw.Draw(img)
        lw = max(2, img.width // 400)
        for regs in ph.regions.values():
            for b in regs.values():
                draw.rectangle(list(b), outline=(60, 200, 60), width=lw)
        for b in ph.boxes.values():
            draw.rectangle(list(b), outline=(255, 40, 40), width=lw)
    scale = width / img.width
    if scale < 1:
        img = img.resize((width, max(1, round(img.height * scale))), Image.LANCZOS)
    path = Path(path)
    img.save(path)
    return path


def _make_one(job: tuple) -> tuple[ImageRecord, dict]:
    out_dir, seed, index, kwargs = job
    t0 = time.perf_counter()
    ph = make_phantom(seed, index, **kwargs)
    t1 = time.perf_counter()
    rec = write_phantom(ph, out_dir)
    t2 = time.perf_counter()
    fx = ph.fracture
    info = {
        "file": rec.file,
        "index": index,
        "format": ph.vendor["format"],
        "transfer_syntax": FORMATS[ph.vendor["format"]][0],
        "width": ph.spec.width,
        "height": ph.spec.height,
        "spacing_mm": round(ph.spec.spacing, 5),
        "bits": ph.vendor["bits"],
        "photometric": "MONOCHROME1" if ph.vendor["mono1"] else "MONOCHROME2",
        "mirrored": bool(ph.vendor["mirrored"] and ph.vendor["format"].startswith("dcm-")),
        "fracture": None if fx is None else {
            "side": fx.side, "kind": fx.kind, "subtlety": round(fx.subtlety, 3), "displaced": fx.params["displaced"],
        },
        "render_s": round(t1 - t0, 4),
        "write_s": round(t2 - t1, 4),
    }
    return rec, info


def generate(
    out_dir: str | os.PathLike,
    count: int,
    seed: int = 0,
    *,
    size: tuple[int, int] | None = None,
    formats: str | list | dict | None = None,
    fracture_rate: float = 0.5,
    mirror_rate: float = 0.1,
    start: int = 0,
    jobs: int = 1,
    progress: bool | None = None,
) -> list[ImageRecord]:
    """Write ``count`` phantoms (indices ``start`` ...) plus labels.csv, regions.csv and synth.json.

    Image ``i`` depends only on (seed, i, size, formats, fracture_rate, mirror_rate), not on
    ``count`` or ``jobs``.
    """
    import json

    if count < 0:
        raise ValueError("count must be >= 0")
    if not 0.0 <= fracture_rate <= 1.0:
        raise ValueError("fracture_rate must be between 0 and 1")
    if not 0.0 <= mirror_rate <= 1.0:
        raise ValueError("mirror_rate must be between 0 and 1")
    weights = parse_formats(formats)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(size=size, fracture_rate=fracture_rate, formats=weights, mirror_rate=mirror_rate)
    jobs_list = [(out_dir, seed, start + i, kwargs) for i in range(count)]
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm import tqdm

    bar = tqdm(total=count, disable=not show, file=sys.stderr, unit="img", desc="synth")
    results: list[tuple[ImageRecord, dict]] = []
    try:
        if jobs > 1 and count > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=jobs) as pool:
                for res in pool.map(_make_one, jobs_list, chunksize=1):
                    results.append(res)
                    bar.update(1)
        else:
            for job in jobs_list:
                results.append(_make_one(job))
                bar.update(1)
    finally:
        bar.close()
    records = [r for r, _ in results]
    write_labels(out_dir, records)
    manifest = {
        "generator": "hipcad synth",
        "note": SYNTHETIC_NOTE,
        "seed": seed,
        "start": start,
        "count": count,
        "size": list(size) if size else None,
        "formats": weights,
        "fracture_rate": fracture_rate,
        "mirror_rate": mirror_rate,
        "images": [info for _, info in results],
    }
    (out_dir / "synth.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return records


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = text.lower().replace("×", "x").split("x")
        size = (int(w), int(h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 2000x1640, not {text!r}") from None
    if min(size) < 64 or max(size) > 16384:
        raise argparse.ArgumentTypeError(f"size {text} is out of range (64 to 16384 pixels a side)")
    return size


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hipcad synth",
        description="Write synthetic AP pelvis radiographs (phantoms, not patients) with hip-fracture labels "
        "in the hipcad dataset format (labels.csv, regions.csv).",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--count", type=int, default=20, metavar="N", help="number of images (default 20)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed; same seed, same images (default 0)")
    p.add_argument("--start", type=int, default=0, metavar="I", help="index of the first image (default 0)")
    p.add_argument("--size", type=_parse_size, default=None, metavar="WxH",
                   help="exact image size, e.g. 4892x4020 (default: random width 1400-2400, film aspect ratios)")
    p.add_argument("--formats", default=None, metavar="LIST",
                   help="comma-separated output formats: dicom (all DICOM syntaxes), dcm-explicit, dcm-rle, "
                   "dcm-jpegls, dcm-j2k, dcm-jpeg, jpeg, png (default: about 70%% DICOM, 30%% JPEG)")
    p.add_argument("--fracture-rate", type=_rate, default=0.5, metavar="P",
                   help="share of images with one hip fracture (default 0.5)")
    p.add_argument("--mirror-rate", type=_rate, default=0.1, metavar="P",
                   help="share of DICOM files stored mirrored, PatientOrientation R\\F (default 0.1)")
    p.add_argument("--jobs", type=int, default=1, metavar="J", help="worker processes (default 1)")
    p.add_argument("--preview", metavar="PNG", help="also write a downscaled preview of the first fractured phantom")
    p.add_argument("--force", action="store_true", help="write into a folder that already holds a labels.csv")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def synth_main(argv: list[str] | None = None) -> int:
    """``hipcad synth``: returns 0 on success, 1 on an error it reports."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.count < 0 or args.start < 0 or args.jobs < 1:
        print("hipcad synth: --count and --start must be >= 0 and --jobs >= 1", file=sys.stderr)
        return 1
    try:
        formats = parse_formats(args.formats)
    except ValueError as err:
        print(f"hipcad synth: {err}", file=sys.stderr)
        return 1
    if out.exists() and not out.is_dir():
        print(f"hipcad synth: {out} exists and is not a folder", file=sys.stderr)
        return 1
    if (out / "labels.csv").exists() and not args.force:
        print(f"hipcad synth: {out} already holds a labels.csv; use --force to overwrite it", file=sys.stderr)
        return 1
    t0 = time.perf_counter()
    try:
        records = generate(out, args.count, args.seed, size=args.size, formats=formats,
                           fracture_rate=args.fracture_rate, mirror_rate=args.mirror_rate, start=args.start,
                           jobs=args.jobs, progress=None if not args.quiet else False)
    except OSError as err:
        print(f"hipcad synth: cannot write to {out}: {err}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - t0
    if args.preview:
        for rec in records:
            if rec.fractured:
                idx = int(Path(rec.file).stem.split("_")[-1])
                save_preview(make_phantom(args.seed, idx, size=args.size, fracture_rate=args.fracture_rate,
                                          formats=formats, mirror_rate=args.mirror_rate), args.preview)
                break
    if not args.quiet:
        import json

        info = json.loads((out / "synth.json").read_text(encoding="utf-8"))["images"]
        n = len(records)
        fx = [i["fracture"] for i in info if i["fracture"]]
        kinds = {k: sum(f["kind"] == k for f in fx) for k in FRACTURE_KINDS}
        sides = {s: sum(f["side"] == s for f in fx) for s in ("right", "left")}
        fmts: dict[str, int] = {}
        for i in info:
            fmts[i["format"]] = fmts.get(i["format"], 0) + 1
        print(f"wrote {n} synthetic phantoms to {out} in {elapsed:.1f} s ({elapsed / max(n, 1):.2f} s/image)")
        print(f"  fractured: {len(fx)} ({', '.join(f'{k} {v}' for k, v in kinds.items())}; "
              f"right {sides['right']}, left {sides['left']}), no fracture: {n - len(fx)}")
        print(f"  formats: {', '.join(f'{k} {v}' for k, v in sorted(fmts.items()))}; "
              f"mirrored (R\\F): {sum(i['mirrored'] for i in info)}")
        print(f"  labels: {out / 'labels.csv'}, regions: {out / 'regions.csv'}")
        if args.preview:
            print(f"  preview: {args.preview}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(synth_main())
