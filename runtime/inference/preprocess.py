"""The paper's preprocessing: split the radiograph at the pelvic midline into the patient's right
and left hip, and resize each half to the model's input size as 8-bit grayscale (batch of 2)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from hipcad.runtime.imaging.radiograph import Radiograph
from hipcad.runtime.inference.midline import find_midline
from hipcad.runtime.inference.sides import SIDES, half_spans, image_left_side


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


def resize_gray(pixels: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    return np.asarray(Image.fromarray(pixels).resize((w, h), Image.BILINEAR))


def prepare(radiograph: Radiograph, input_hw: tuple[int, int], midline_x: int | None = None) -> Prepared:
    """The two halves of ``radiograph`` cut at column ``midline_x`` (found by :mod:`.midline` when
    not given), patient right first, each resized to ``input_hw``."""
    pixels = radiograph.pixels
    cols = pixels.shape[1]
    if midline_x is None:
        midline_x = find_midline(pixels).x
    midline = min(max(int(midline_x), 1), cols - 1)
    left_is, note = image_left_side(radiograph.metadata.get("patient_orientation"))
    spans = half_spans(midline, cols, left_is)
    halves = [Half(side, *spans[side]) for side in SIDES]
    batch = np.empty((2, 1, *input_hw), dtype=np.uint8)
    for i, half in enumerate(halves):
        batch[i, 0] = resize_gray(pixels[:, half.x0 : half.x1], input_hw)
    return Prepared(batch=batch, halves=halves, midline_x=midline, image_left_is=left_is, notes=[note] if note else [])
