"""How much real colour a colour-encoded image holds, measured before it is converted to grey.

Radiographs are often stored as RGB (a secondary capture, a JPEG export): grey stored as RGB has
no chroma and is fine; a photograph is not a radiograph; a monochrome film seen through a tint
(sepia, a blue film base) is coloured but carries one hue that its grey level explains. The
decoder records the result in ``Radiograph.colour`` (None for grey sources); the eligibility
check compares ``colour_fraction`` with the limit in the model bundle.
"""

from __future__ import annotations

import math

import numpy as np

_CHROMA = 12.0  # of 255: the chroma (Cb, Cr distance from grey) above which a pixel is coloured


def _empty(samples: int = 0) -> dict:
    return {"coloured_fraction": 0.0, "unexplained_fraction": 0.0, "hue_spread_deg": 0.0, "colourfulness": 0.0,
            "tint": False, "colour_fraction": 0.0, "samples": samples}


def colour_content(arr: np.ndarray, photometric: str = "RGB", max_samples: int = 65536, top: float | None = None) -> dict:
    """Colour statistics of an RGB or YBR image (H x W x 3, any integer or float range 0..top).

    Call it in the decoder *before* the grey conversion: for DICOM in ``_color`` on the array
    that is about to be converted (``rgb`` there: RGB after a palette LUT, YBR_* as stored --
    pass that photometric), for JPEG / PNG on ``img.convert("RGB")`` of a reduced copy
    (``img.draft("RGB", ...)`` for JPEG, ``img.reduce(k)`` otherwise) before ``convert("L")``.
    The result goes into ``Radiograph.colour``. Pixels are subsampled on a fixed grid
    (deterministic), so the cost does not grow with the image. ``top``: the value of full
    intensity (default: the dtype's maximum for integers, the largest value for floats).

    Returns
      coloured_fraction     share of pixels whose chroma exceeds 12/255 of the range
      unexplained_fraction  share of pixels whose chroma differs by more than 12/255 from the
                            mean chroma of pixels of the same grey level: ~0 for grey and for a
                            monochrome image seen through a tint, large for photographs
      hue_spread_deg        circular standard deviation of the hue of the coloured pixels
      colourfulness         Hasler-Suesstrunk M (0 grey; ~15 'slightly colourful'; >45 'quite')
      tint                  coloured, but one hue that the grey level explains (sepia, blue film)
      colour_fraction       what eligibility compares with its limit: coloured_fraction, or 0
                            for a tint
      samples               how many pixels were measured
    """
    a = np.asarray(arr)
    if a.ndim != 3 or a.shape[2] < 3 or a.shape[0] == 0 or a.shape[1] == 0:
        return _empty()
    h, w = a.shape[:2]
    step = max(1, int(math.ceil(math.sqrt(h * w / max_samples))))
    s = a[::step, ::step, :3].astype(np.float32)
    if top is None:
        top = float(np.iinfo(a.dtype).max) if a.dtype.kind in "ui" else max(1.0, float(np.nanmax(s)))
    s *= np.float32(255.0 / max(float(top), 1e-9))
    ph = photometric.strip().upper()
    if ph.startswith("YBR") and ph not in ("YBR_RCT", "YBR_ICT"):  # decoders deliver RCT / ICT as RGB
        y, cb, cr = s[..., 0], s[..., 1] - 128.0, s[..., 2] - 128.0
        r = y + 1.402 * cr
        g = y - 0.344136 * cb - 0.714136 * cr
        b = y + 1.772 * cb
    else:
        r, g, b = s[..., 0], s[..., 1], s[..., 2]
        cb = -0.168736 * r - 0.331264 * g + 0.5 * b
        cr = 0.5 * r - 0.418688 * g - 0.081312 * b
    chroma = np.sqrt(cb * cb + cr * cr)
    coloured = chroma > _CHROMA
    coloured_fraction = float(coloured.mean())
    # colour explained by the grey level (a monochrome image seen through a tint): the residual
    # of (Cb, Cr) after the mean (Cb, Cr) of its luminance bin
    y = 0.299 * r + 0.587 * g + 0.114 * b
    bins = np.clip((y * (32.0 / 256.0)).astype(np.int32), 0, 31).ravel()
    n = np.bincount(bins, minlength=32).astype(np.float64)
    mcb = np.bincount(bins, cb.ravel(), minlength=32) / np.maximum(n, 1)
    mcr = np.bincount(bins, cr.ravel(), minlength=32) / np.maximum(n, 1)
    res = np.hypot(cb.ravel() - mcb[bins], cr.ravel() - mcr[bins])
    unexplained_fraction = float((res > _CHROMA).mean())
    # hue spread of the coloured pixels (circular standard deviation, degrees)
    if coloured.any():
        ang = np.arctan2(cr[coloured], cb[coloured])
        resultant = float(np.hypot(np.cos(ang).mean(), np.sin(ang).mean()))
        hue_spread = float(np.degrees(math.sqrt(max(0.0, -2.0 * math.log(max(resultant, 1e-9))))))
    else:
        hue_spread = 0.0
    rg = r - g
    yb = 0.5 * (r + g) - b
    colourfulness = float(math.sqrt(rg.std() ** 2 + yb.std() ** 2) + 0.3 * math.sqrt(rg.mean() ** 2 + yb.mean() ** 2))
    tint = bool(coloured_fraction > 0.01 and unexplained_fraction <= 0.01 and hue_spread <= 20.0)
    return {
        "coloured_fraction": round(coloured_fraction, 4),
        "unexplained_fraction": round(unexplained_fraction, 4),
        "hue_spread_deg": round(hue_spread, 1),
        "colourfulness": round(colourfulness, 2),
        "tint": tint,
        # what eligibility compares with its limit: coloured pixels, unless it is all one tint
        "colour_fraction": 0.0 if tint else round(coloured_fraction, 4),
        "samples": int(coloured.size),
    }
