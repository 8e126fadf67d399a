"""Splitting at the pelvic midline and mapping image halves to patient sides."""

from __future__ import annotations

import numpy as np
import pytest

from hipcad.runtime.imaging.decode import decode
from hipcad.runtime.imaging.radiograph import Radiograph
from hipcad.runtime.inference.midline import find_midline
from hipcad.runtime.inference.preprocess import prepare
from hipcad.runtime.inference.sides import image_left_side
from tests.helpers import pelvis_like, write_dicom


@pytest.mark.parametrize("centre", [0.5, 0.38, 0.62])
def test_midline_follows_an_off_centre_pelvis(centre):
    img = pelvis_like(700, 1000, centre=centre)
    assert abs(find_midline(img).x - centre * 1000) <= 15


@pytest.mark.parametrize(
    "orientation, left_is, assumed",
    [("L\\F", "right", False), ("R\\F", "left", False), ("L\\H", "right", False), ("R\\H", "left", False),
     (None, "right", True), ("", "right", True), ("A\\F", "right", True), ("LR\\F", "right", True)],
)
def test_patient_orientation_maps_sides(orientation, left_is, assumed):
    side, note = image_left_side(orientation)
    assert side == left_is
    assert (note is not None) == assumed
    if assumed:
        assert "standard" in note


def _marked(rows=400, cols=600):
    """Image-left half dark, image-right half bright: which half went where is unmistakable."""
    img = np.full((rows, cols), 40, np.uint8)
    img[:, cols // 2 :] = 200
    return img


def test_standard_ap_puts_image_left_in_the_right_hip_slot():
    r = Radiograph(_marked(), (400, 600), "png", metadata={"patient_orientation": "L\\F"})
    p = prepare(r, (64, 64))
    assert [h.side for h in p.halves] == ["right", "left"]
    assert p.batch.shape == (2, 1, 64, 64) and p.batch.dtype == np.uint8
    assert p.batch[0].mean() < 100 < p.batch[1].mean()  # right hip = image left = dark
    assert p.notes == []


def test_mirrored_image_R_F_gets_its_sides_right(tmp_path):
    """A horizontally flipped radiograph (PatientOrientation R\\F): image left is the patient's left."""
    path = write_dicom(tmp_path / "flipped.dcm", _marked(), PatientOrientation=["R", "F"])
    p = prepare(decode(path), (64, 64))
    right, left = p.batch[0].mean(), p.batch[1].mean()
    assert left < 100 < right  # patient left = image left = dark
    assert p.image_left_is == "left"
    by_side = {h.side: h for h in p.halves}
    assert by_side["left"].x0 == 0 and by_side["right"].x1 == 600


def test_missing_orientation_says_the_standard_was_assumed(tmp_path):
    path = write_dicom(tmp_path / "noorient.dcm", _marked())
    p = prepare(decode(path), (64, 64))
    assert p.image_left_is == "right"
    assert any("assumed" in n for n in p.notes)


def test_midline_on_synthetic_phantoms_with_shutters_and_off_centre_pelves():
    """Phantoms vary in position (up to 12 % off centre), collimation and markers; the found
    midline must stay close to the true one on every one of them."""
    from hipcad.runtime.synth import make_phantom

    errors = []
    for index in range(30):
        phantom = make_phantom(0, index, size=(700, 560))
        errors.append(abs(find_midline(phantom.display()).x - phantom.midline_x))
    assert max(errors) <= 0.03 * 700, errors
