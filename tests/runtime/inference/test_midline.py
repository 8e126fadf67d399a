"""A midline that holds: the same image as DICOM and as JPEG, and with ±1 grey-level noise, is
split within 2 % of its width in every case; the split follows the anatomy, not the image's
centre; near-equal optima give a low confidence, and a very low one makes the image ineligible.
Fresh phantoms (seed 73121, not a tuning seed)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hipcad.runtime.imaging.decode import decode
from hipcad.runtime.inference.midline import find_midline
from hipcad.runtime.model.intended_use import DEFAULT_INTENDED_USE
from tests.helpers import phantom, write_dicom

SEED = 73121


@pytest.fixture(scope="module")
def phantoms():
    return [phantom(SEED, index, size=None) for index in range(10)]  # the generator's own sizes and positions


def _variants(pixels: np.ndarray, tmp_path, index: int) -> dict[str, np.ndarray]:
    """The same image as a DICOM and as a JPEG (decoded as the pipeline decodes them), each also
    with ±1 grey level of noise."""
    dcm = write_dicom(tmp_path / f"{index}.dcm", pixels, Modality="DX", PatientOrientation=["L", "F"])
    jpg = tmp_path / f"{index}.jpg"
    Image.fromarray(pixels).save(jpg, quality=90)
    rng = np.random.default_rng(index)
    out = {}
    for name, path in (("dicom", dcm), ("jpeg", jpg)):
        decoded = decode(path, min_side=1024).pixels
        noise = rng.integers(-1, 2, decoded.shape)
        out[name] = decoded
        out[f"{name}+noise"] = np.clip(decoded.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return out


def test_same_image_any_encoding_and_noise_gives_the_same_midline(phantoms, tmp_path):
    for index, (pixels, ph) in enumerate(phantoms):
        found = {}
        for name, decoded in _variants(pixels, tmp_path, index).items():
            midline = find_midline(decoded)
            found[name] = midline.x / decoded.shape[1]  # as a fraction of the width
            assert midline.confidence >= DEFAULT_INTENDED_USE["midline"]["warn_below"], (index, name, midline.confidence)
        spread = max(found.values()) - min(found.values())
        assert spread <= 0.02, (index, found)
        assert abs(found["dicom"] - ph.midline_x / pixels.shape[1]) <= 0.02, (index, found, ph.midline_x)


def test_midline_follows_the_pelvis_not_the_film(phantoms):
    """A pelvis placed off-centre in a wider film (collimated, with a blank margin on one side)."""
    pixels, ph = phantoms[0]
    rows, cols = pixels.shape
    for pad_left in (0, cols // 3):
        canvas = np.full((rows, cols + cols // 3), int(np.percentile(pixels, 5)), np.uint8)
        canvas[:, pad_left:pad_left + cols] = pixels
        midline = find_midline(canvas)
        assert abs(midline.x - (pad_left + ph.midline_x)) <= 0.02 * canvas.shape[1], (pad_left, midline.x)


def test_near_equal_optima_have_a_low_confidence(phantoms):
    """Three copies of a pelvis side by side: three equally good axes; no way to choose by anatomy."""
    pixels, _ = phantoms[1]
    triple = np.ascontiguousarray(np.hstack([pixels, pixels, pixels]))
    assert find_midline(triple).confidence < DEFAULT_INTENDED_USE["midline"]["refuse_below"]


def test_featureless_and_degenerate_images_have_no_midline():
    for shape in ((800, 1000), (1, 100), (100, 1), (16, 16)):
        midline = find_midline(np.full(shape, 120, np.uint8))
        assert midline.confidence == 0.0 and 0 <= midline.x <= shape[1]
