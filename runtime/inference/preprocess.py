"""The paper's preprocessing: split the radiograph at the pelvic midline into the patient's right
and left hip, and resize each half to the model's input size as 8-bit grayscale (batch of 2).

The pelvis is not always centred in the film, so the midline is found as the vertical axis of
best left-right mirror symmetry of the image's edges, searched over the central half of the
width on a small copy of the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from hipcad.runtime.imaging.radiograph import Radiograph

SIDES = ("right", "left")  # batch order: patient right hip first, then left
MIDLINE_WORK_WIDTH = 256
MIDLINE_SEARCH = (0.25, 0.75)  # fraction of the width searched for the midline


@dataclass
class Half:
    side: str  # patient side, "right" | "left"
    x0: int  # column range in the decoded image, [x0, x1)
    x1: int


@dataclass
class Prepared:
    batch: np.ndarray  # uint8 [2, 1, H, W], order SIDES
    halves: list[Half]
    midline_x: int  # in decoded-image columns
    image_left_is: str  # patient side shown on the image's left ("right" in a standard AP)
    notes: list[str] = field(default_factory=list)


def image_left_side(patient_orientation: str | None) -> tuple[str, str | None]:
    """Patient side on the image's left, from PatientOrientation (0020,0020), and a note if assumed.

    The first value is the patient direction of increasing column (left to right across the
    image). Standard AP: "L" (towards the patient's left), so the image's left is the patient's
    right. "R" means the image is mirrored: the image's left is the patient's left.
    """
    standard = "right"
    if not patient_orientation:
        return standard, "no PatientOrientation: standard AP orientation assumed (image left = patient right)"
    row_direction = patient_orientation.split("\\")[0].upper()
    has_l, has_r = "L" in row_direction, "R" in row_direction
    if has_l and not has_r:
        return "right", None
    if has_r and not has_l:
        return "left", None
    return standard, (
        f"PatientOrientation {patient_orientation!r} gives no left/right direction across the image: "
        "standard AP orientation assumed (image left = patient right)"
    )


def find_midline(pixels: np.ndarray) -> int:
    """Column of best left-right mirror symmetry of the image's edge map.

    Symmetry is scored by the normalised cross-correlation of the edge map left of a candidate
    column with the mirrored edge map right of it, so that featureless regions (soft tissue,
    collimator shutters) score nothing and the pelvis, rich in mirrored edges, wins.
    """
    rows, cols = pixels.shape
    work_w = min(MIDLINE_WORK_WIDTH, cols)
    work_h = max(8, round(rows * work_w / cols))
    small = np.asarray(Image.fromarray(pixels).resize((work_w, work_h), Image.BILINEAR, reducing_gap=3.0), dtype=np.float32)
    # edges, robust to exposure gradients: horizontal + vertical gradient magnitude
    edges = np.abs(np.diff(small, axis=1))[:-1, :] + np.abs(np.diff(small, axis=0))[:, :-1]
    # a few very strong edges (collimator shutters, markers, the film's border) must not outvote
    # the many bone contours of the pelvis
    np.minimum(edges, np.percentile(edges, 90), out=edges)
    w = edges.shape[1]
    lo, hi = int(w * MIDLINE_SEARCH[0]), int(w * MIDLINE_SEARCH[1])
    span = int(w * 0.2)
    best, best_score = w // 2, -np.inf
    for c in range(max(lo, span), min(hi, w - span) + 1):
        left = edges[:, c - span : c]
        right = edges[:, c : c + span][:, ::-1]
        a, b = left - left.mean(), right - right.mean()
        score = float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-6))
        if score > best_score:
            best, best_score = c, score
    return int(round((best + 0.5) * cols / w))


def resize_gray(pixels: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    return np.asarray(Image.fromarray(pixels).resize((w, h), Image.BILINEAR))


def prepare(radiograph: Radiograph, input_hw: tuple[int, int]) -> Prepared:
    pixels = radiograph.pixels
    cols = pixels.shape[1]
    midline = min(max(find_midline(pixels), 1), cols - 1)
    left_is, note = image_left_side(radiograph.metadata.get("patient_orientation"))
    right_is = "left" if left_is == "right" else "right"
    spans = {left_is: (0, midline), right_is: (midline, cols)}
    halves = [Half(side, *spans[side]) for side in SIDES]
    batch = np.empty((2, 1, *input_hw), dtype=np.uint8)
    for i, half in enumerate(halves):
        batch[i, 0] = resize_gray(pixels[:, half.x0 : half.x1], input_hw)
    return Prepared(batch=batch, halves=halves, midline_x=midline, image_left_is=left_is, notes=[note] if note else [])
