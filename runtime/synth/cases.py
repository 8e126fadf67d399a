"""The random description of one phantom: anatomy, position, exposure, vendor look and the fracture,\neach drawn from its own random stream (so the same case without its fracture differs only there)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from hipcad.runtime.synth.formats import _ASPECTS, FRACTURE_KINDS, parse_formats


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


def _sample_fracture(rng: np.random.Generator, rate: float, fracture: str, side: str,
                     subtlety_range: dict[str, tuple[float, float]] | None = None) -> FractureSpec | None:
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
    lo, hi = (subtlety_range or {}).get(kind, (0.0, 1.0))
    subtlety = lo + (hi - lo) * float(subtlety)  # a narrower range plants an easier or harder kind
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
    subtlety: dict[str, tuple[float, float]] | None = None,
) -> CaseSpec:
    """Draw every random parameter of phantom ``index`` of the run ``seed``. ``subtlety`` maps a
    fracture kind to the range its subtlety is drawn from (default 0-1: obvious to barely
    visible), e.g. ``{"trochanteric": (0.7, 1.0)}`` for a harder kind."""
    rngs = _rngs(seed, index)
    width, height = _sample_size(rngs["anatomy"], size)
    # field of view: 380-460 mm across, enough height for the hips and the lesser trochanters
    w_mm = float(rngs["anatomy"].uniform(380.0, 460.0))
    w_mm = max(w_mm, 250.0 * width / height)
    spacing = w_mm / width
    anatomy = _sample_anatomy(rngs["anatomy"], w_mm, height * spacing)
    fx = _sample_fracture(rngs["fracture"], float(fracture_rate), fracture, side, subtlety)
    vendor = _sample_vendor(rngs["vendor"], parse_formats(formats), float(mirror_rate))
    return CaseSpec(seed=int(seed), index=int(index), width=width, height=height, spacing=spacing,
                    anatomy=anatomy, vendor=vendor, fracture=fx)


