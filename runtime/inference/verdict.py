"""The verdict per patient side: the one thing hipcad exists to produce, typed, and worded once.

A :class:`SideVerdict` holds the fracture probability of one hip, whether it reaches the bundle's
operating point, and where the heatmap is hottest. Every place that shows a verdict (the
command line, the overlay, the kiosk, the DICOM report, the log) words it with
:func:`verdict_words`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hipcad.runtime.inference.preprocess import Prepared

FRACTURE_WORDS = "FRACTURE SUSPECTED"
CLEAR_WORDS = "no fracture detected"


def verdict_words(fracture: bool) -> str:
    return FRACTURE_WORDS if fracture else CLEAR_WORDS


@dataclass(frozen=True)
class SideVerdict:
    side: str  # patient side, "right" | "left"
    probability: float  # of class 1 (fracture)
    fracture: bool  # probability >= the operating point's threshold
    heatmap_peak: tuple[float, float]  # centre of the hottest CAM cell, stored-image pixels (x, y)
    heatmap_peak_box: tuple[float, float, float, float]  # that cell: x0, y0, x1, y1

    @property
    def words(self) -> str:
        return verdict_words(self.fracture)

    def to_json(self) -> dict:
        return {"side": self.side, "probability": self.probability, "fracture": self.fracture,
                "heatmap_peak": list(self.heatmap_peak), "heatmap_peak_box": list(self.heatmap_peak_box)}


def fracture_probability(logits: np.ndarray) -> np.ndarray:
    """Softmax probability of class 1 (fracture), computed stably."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, 1] / e.sum(axis=1)


def side_verdicts(
    prepared: Prepared, logits: np.ndarray, cam: np.ndarray, threshold: float, decoded_hw: tuple[int, int], scale: float
) -> list[SideVerdict]:
    """Per side: probability, verdict, and the heatmap's hottest point and hottest CAM cell
    (``heatmap_peak_box``: x0, y0, x1, y1) in stored-image pixels."""
    probs = fracture_probability(logits)
    rows = decoded_hw[0]
    verdicts = []
    for i, half in enumerate(prepared.halves):
        gy, gx = np.unravel_index(int(np.argmax(cam[i])), cam[i].shape)
        # the hottest CAM cell, mapped through the half's rectangle
        cell_w, cell_h = (half.x1 - half.x0) / cam.shape[2], rows / cam.shape[1]
        x0, y0 = half.x0 + gx * cell_w, gy * cell_h
        verdicts.append(SideVerdict(
            side=half.side,
            probability=round(float(probs[i]), 6),
            fracture=bool(probs[i] >= threshold),
            heatmap_peak=(round((x0 + cell_w / 2) / scale, 1), round((y0 + cell_h / 2) / scale, 1)),
            heatmap_peak_box=tuple(round(v / scale, 1) for v in (x0, y0, x0 + cell_w, y0 + cell_h)),
        ))
    return verdicts
