"""The verdict per patient side: the one thing hipcad exists to produce, typed, and worded once.

A :class:`SideVerdict` holds the fracture probability of one hip, whether it reaches the bundle's
operating point, and where the heatmap is hottest. Every place that shows a verdict (the
command line, the overlay, the kiosk, the DICOM report, the log) words it with
:func:`verdict_words` and its number with :func:`score_words`.

The number is ``sigmoid((l1 - l0) / T + b)`` of the network's two logits: the softmax of class 1
with the bundle's temperature ``T`` (and, for Platt scaling, a bias ``b``; :class:`Calibration`,
from the manifest's ``calibration``; ``T = 1, b = 0`` when none was fitted). This is the only
place the calibration is applied. Only a calibrated bundle's number is called a probability; an
uncalibrated one is a score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hipcad.runtime.inference.preprocess import Prepared

FRACTURE_WORDS = "FRACTURE SUSPECTED"
CLEAR_WORDS = "no fracture detected"


def verdict_words(fracture: bool) -> str:
    return FRACTURE_WORDS if fracture else CLEAR_WORDS


def score_words(value: float, calibrated: bool) -> str:
    """The number of a verdict as shown to a person: "probability 45 %" when the bundle is
    calibrated, else "score 0.45" (a raw softmax output is not a probability)."""
    return f"probability {value * 100:.0f} %" if calibrated else f"score {value:.2f}"


def threshold_words(value: float, calibrated: bool) -> str:
    """A threshold (or another value on the verdict's scale): "21 %" or "0.21"; below 1 % with two
    significant digits, so that a small value is not shown as 0."""
    if calibrated:
        return f"{value * 100:.0f} %" if value >= 0.01 or value <= 0 else f"{value * 100:.2g} %"
    return f"{value:.2f}" if value >= 0.01 or value <= 0 else f"{value:.2g}"


@dataclass(frozen=True)
class Calibration:
    """How the logits become the number shown: ``sigmoid((l1 - l0) / temperature + bias)``.

    ``calibrated`` says whether it was fitted on labelled radiographs: temperature scaling (Guo et
    al. 2017; ``bias`` 0) or Platt's logistic scaling (both fitted). A bundle without a fitted one
    has ``Calibration()``: the plain softmax, which is called a score."""

    temperature: float = 1.0
    bias: float = 0.0
    calibrated: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.temperature) and self.temperature > 0 and math.isfinite(self.bias)):
            raise ValueError(f"the temperature must be a positive number and the bias finite, not "
                             f"{self.temperature!r} and {self.bias!r}")

    def probability(self, logits: np.ndarray) -> np.ndarray:
        return fracture_probability(logits, self.temperature, self.bias)

    def log_odds(self, p: float) -> float:
        """The fracture log-odds ``l1 - l0`` at which the number shown is ``p`` (0 < p < 1)."""
        return self.temperature * (math.log(p / (1 - p)) - self.bias)


UNCALIBRATED = Calibration()


@dataclass(frozen=True)
class SideVerdict:
    side: str  # patient side, "right" | "left"
    probability: float  # of class 1 (fracture), calibrated when ``calibrated``
    fracture: bool  # probability >= the operating point's threshold
    heatmap_peak: tuple[float, float]  # centre of the hottest CAM cell, stored-image pixels (x, y)
    heatmap_peak_box: tuple[float, float, float, float]  # that cell: x0, y0, x1, y1
    logit: float = 0.0  # l1 - l0: the fracture log-odds before any calibration
    calibrated: bool = False  # whether ``probability`` is a calibrated probability or a raw score

    @property
    def words(self) -> str:
        return verdict_words(self.fracture)

    @property
    def score_words(self) -> str:
        return score_words(self.probability, self.calibrated)

    def to_json(self) -> dict:
        return {"side": self.side, "probability": self.probability, "fracture": self.fracture,
                "calibrated": self.calibrated, "logit": self.logit,
                "heatmap_peak": list(self.heatmap_peak), "heatmap_peak_box": list(self.heatmap_peak_box)}


def fracture_logit(logits: np.ndarray) -> np.ndarray:
    """The fracture log-odds ``l1 - l0`` per row (what the softmax of class 1 is the sigmoid of)."""
    logits = np.asarray(logits, dtype=np.float64)
    return logits[:, 1] - logits[:, 0]


def log_odds_probability(logit, temperature: float = 1.0, bias: float = 0.0) -> np.ndarray:
    """``sigmoid(logit / temperature + bias)`` of fracture log-odds, computed stably."""
    z = np.asarray(logit, dtype=np.float64) / float(temperature) + float(bias)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def fracture_probability(logits: np.ndarray, temperature: float = 1.0, bias: float = 0.0) -> np.ndarray:
    """Softmax probability of class 1 (fracture) of ``logits / temperature``, shifted by ``bias``
    on the log-odds: ``sigmoid((l1 - l0) / temperature + bias)``."""
    return log_odds_probability(fracture_logit(logits), temperature, bias)


def side_verdicts(
    prepared: Prepared, logits: np.ndarray, cam: np.ndarray, threshold: float, decoded_hw: tuple[int, int], scale: float,
    calibration: Calibration = UNCALIBRATED,
) -> list[SideVerdict]:
    """Per side: probability (with the bundle's ``calibration``), verdict, and the heatmap's hottest
    point and hottest CAM cell (``heatmap_peak_box``: x0, y0, x1, y1) in stored-image pixels."""
    probs = calibration.probability(logits)
    margins = fracture_logit(logits)
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
            logit=round(float(margins[i]), 5),
            calibrated=calibration.calibrated,
        ))
    return verdicts
