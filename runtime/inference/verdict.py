"""From logits and per-half CAMs to verdicts per patient side and a heatmap on the image."""

from __future__ import annotations

import numpy as np
from PIL import Image

from hipcad.runtime.inference.preprocess import Prepared


def fracture_probability(logits: np.ndarray) -> np.ndarray:
    """Softmax probability of class 1 (fracture), computed stably."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, 1] / e.sum(axis=1)


def heatmap_on_image(prepared: Prepared, cam: np.ndarray, shape_hw: tuple[int, int], decoded_cols: int) -> np.ndarray:
    """Each half's CAM, bilinearly resized onto that half's place in an image of ``shape_hw``
    (the decoded image, possibly scaled), min-max normalised per half to [0, 1] as the paper's
    per-image heatmaps were. float32 ``[H, W]``."""
    h, w = shape_hw
    out = np.zeros((h, w), dtype=np.float32)
    sx = w / decoded_cols
    for i, half in enumerate(prepared.halves):
        x0, x1 = round(half.x0 * sx), round(half.x1 * sx)
        if x1 <= x0:
            continue
        c = cam[i].astype(np.float32)
        c = c - c.min()
        peak = c.max()
        c = c / peak if peak > 0 else c
        out[:, x0:x1] = np.asarray(Image.fromarray(c, mode="F").resize((x1 - x0, h), Image.BILINEAR))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def side_results(
    prepared: Prepared, logits: np.ndarray, cam: np.ndarray, threshold: float, decoded_hw: tuple[int, int], scale: float
) -> list[dict]:
    """Per side: probability, verdict, and the heatmap's hottest point and hottest CAM cell
    (``heatmap_peak_box``: x0, y0, x1, y1) in stored-image pixels."""
    probs = fracture_probability(logits)
    rows = decoded_hw[0]
    results = []
    for i, half in enumerate(prepared.halves):
        gy, gx = np.unravel_index(int(np.argmax(cam[i])), cam[i].shape)
        # the hottest CAM cell, mapped through the half's rectangle
        cell_w, cell_h = (half.x1 - half.x0) / cam.shape[2], rows / cam.shape[1]
        x0, y0 = half.x0 + gx * cell_w, gy * cell_h
        results.append(
            {
                "side": half.side,
                "probability": round(float(probs[i]), 6),
                "fracture": bool(probs[i] >= threshold),
                "heatmap_peak": [round((x0 + cell_w / 2) / scale, 1), round((y0 + cell_h / 2) / scale, 1)],
                "heatmap_peak_box": [round(v / scale, 1) for v in (x0, y0, x0 + cell_w, y0 + cell_h)],
            }
        )
    return results
