"""The heatmap on the image: each half's CAM mapped back onto that half's place in the radiograph."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
from PIL import Image

from hipcad.runtime.inference.preprocess import Prepared


def heatmap_on_image(prepared: Prepared, cam: np.ndarray, shape_hw: tuple[int, int], decoded_cols: int,
                     sides: Collection[str] | None = None) -> np.ndarray:
    """Each half's CAM, bilinearly resized onto that half's place in an image of ``shape_hw``
    (the decoded image, possibly scaled), min-max normalised per half to [0, 1] as the paper's
    per-image heatmaps were. float32 ``[H, W]``. With ``sides``, only those patient sides' halves
    get their heatmap (the others stay 0)."""
    h, w = shape_hw
    out = np.zeros((h, w), dtype=np.float32)
    sx = w / decoded_cols
    for i, half in enumerate(prepared.halves):
        x0, x1 = round(half.x0 * sx), round(half.x1 * sx)
        if x1 <= x0 or (sides is not None and half.side not in sides):
            continue
        c = cam[i].astype(np.float32)
        c = c - c.min()
        peak = c.max()
        c = c / peak if peak > 0 else c
        out[:, x0:x1] = np.asarray(Image.fromarray(c, mode="F").resize((x1 - x0, h), Image.BILINEAR))
    np.clip(out, 0.0, 1.0, out=out)
    return out
