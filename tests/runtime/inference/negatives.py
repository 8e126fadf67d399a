"""Images the model is not for, for the eligibility tests: a few real files shipped in wheels
(matplotlib's sample photographs and MR slice) and synthetic ones (a chest film, an axial CT-like
slice, colour scenes, single-hip crops and shrunken or rotated phantoms, masks, flat images).
Every generator is seeded; none of these seeds was used to tune the eligibility check."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def _u8(a: np.ndarray, lo=None, hi=None) -> np.ndarray:
    lo = np.percentile(a, 0.5) if lo is None else lo
    hi = np.percentile(a, 99.5) if hi is None else hi
    return (np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1) * 255 + 0.5).astype(np.uint8)


def _blur(a: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur through an 8-bit image (Pillow blurs no float images), back on ``a``'s range."""
    lo, hi = float(a.min()), float(a.max())
    u8 = Image.fromarray(_u8(a, lo, hi)).filter(ImageFilter.GaussianBlur(radius))
    return lo + np.asarray(u8, dtype=np.float32) / 255.0 * (hi - lo)


def upscaled(img: Image.Image, min_side: int = 1024) -> Image.Image:
    """Large enough that the size check cannot be what refuses it."""
    s = min_side / min(img.size)
    return img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC) if s > 1 else img


def matplotlib_samples() -> dict[str, Image.Image]:
    """Real images shipped in matplotlib's wheel: a colour photograph, a packshot, a logo, an MR slice."""
    import matplotlib

    folder = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"
    out = {}
    for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png"):
        if (folder / name).is_file():
            out[name] = Image.open(folder / name).convert("RGB")
    mr = folder / "s1045.ima.gz"
    if mr.is_file():
        a = np.frombuffer(gzip.open(mr).read(), dtype=">u2").reshape(256, 256).astype(np.float32)
        out["s1045 MR slice"] = upscaled(Image.fromarray(_u8(a)))
    return out


def chest_film(seed: int, w: int = 1400, h: int = 1700) -> np.ndarray:
    """A PA chest film: lungs, heart, spine, ribs, clavicles, humeral heads, diaphragm."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = (xx - w * rng.uniform(0.46, 0.54)) / w, yy / h
    a = 0.8 * (((u / 0.46) ** 2 + ((v - 0.55) / 0.62) ** 2) < 1)
    for s, size in ((-1, 1.0), (1, 0.95)):
        a = a - 0.5 * ((((u - s * 0.17) / (0.13 * size)) ** 2 + ((v - 0.45) / (0.28 * size)) ** 2) < 1)
    a = a + 0.5 * ((((u - 0.05) / 0.12) ** 2 + ((v - 0.62) / 0.13) ** 2) < 1) + 0.4 * ((np.abs(u) < 0.055) & (v < 0.7))
    a = a + 0.5 * (np.abs(u) < 0.03)
    for k in range(9):
        for s in (-1, 1):
            arc = np.abs(v - (0.2 + 0.065 * k + 0.9 * (u * s - 0.02) ** 2 + 0.05 * s * u)) < 0.009
            a = a + 0.35 * (arc & (s * u > 0.02) & (s * u < 0.36))
    for s in (-1, 1):
        a = a + 0.6 * ((np.abs(v - (0.14 + 0.12 * (s * u - 0.05))) < 0.012) & (s * u > 0.03) & (s * u < 0.3))
        a = a + 0.9 * (((u - s * 0.41) ** 2 + ((v - 0.17) * h / w) ** 2) < 0.045 ** 2)
        a = a + 0.7 * ((np.abs(u - s * 0.43) < 0.025) & (v > 0.17))
    a = a + 0.55 * (v > 0.72 + 0.25 * u ** 2) + rng.normal(0, 0.02, a.shape)
    return _u8(_blur(a, 3.0) + rng.normal(0, 0.015, a.shape).astype(np.float32))


def ct_pelvis_slice(seed: int, n: int = 512) -> np.ndarray:
    """An axial CT-like slice at the level of the femoral heads (window -160..240 HU)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    u, v = (xx - n / 2) / n, (yy - n / 2) / n
    a = np.full((n, n), -1000.0, np.float32)
    body = (u / 0.44) ** 2 + ((v - 0.02) / 0.30) ** 2
    a[body < 1] = 40
    a[(body < 1) & (body > 0.93)] = -100
    a[((u / 0.05) ** 2 + ((v - 0.16) / 0.05) ** 2) < 1] = 700
    for s in (-1, 1):
        head = (u - s * 0.2) ** 2 + v ** 2
        a[head < 0.055 ** 2] = 350
        a[(head < 0.055 ** 2) & (head > 0.046 ** 2)] = 1000
        a[((u - s * 0.16) / 0.1) ** 2 + ((v - 0.12) / 0.03) ** 2 < 1] = 800
    a[((u / 0.08) ** 2 + ((v + 0.08) / 0.06) ** 2) < 1] = 10
    return _u8(_blur(a + rng.normal(0, 12, a.shape).astype(np.float32), 0.8), -160, 240)


def colour_scene(seed: int, w: int = 1200, h: int = 900) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(60, 255, 3)))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(8, 25))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = [x0, y0, x0 + int(rng.integers(40, 400)), y0 + int(rng.integers(40, 400))]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return img


def mirrored_blobs(n: int = 1024) -> np.ndarray:
    """A binary mask with two mirrored blobs (a segmentation-like image)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    m = np.zeros((n, n), np.uint8)
    for s in (-1, 1):
        m[(((xx - 0.5 - s * 0.2) / 0.07) ** 2 + ((yy - 0.5) / 0.1) ** 2) < 1] = 255
    return m
