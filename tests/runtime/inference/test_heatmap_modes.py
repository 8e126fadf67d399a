"""The overlay's heatmap modes as a reader sees them: ``suspected`` colours only the hips with a
suspected fracture (the other hip stays the plain radiograph), ``all`` colours both, as the paper
showed it; any other mode is refused. Checked on the overlay's pixels, in process (``render``) and
through ``hipcad predict --heatmap``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from hipcad.runtime.backends import open_backend
from hipcad.runtime.inference.overlay import HEATMAP_MODES, display_image, render
from hipcad.runtime.inference.pipeline import Pipeline
from hipcad.runtime.inference.verdict import side_verdicts
from hipcad.runtime.model.bundle import load_bundle
from tests.helpers import phantom, run_cli

SEED = 61803  # used by no other test
SIZE = (800, 640)  # width, height: the overlay keeps it (under 1024 px)
# an obvious neck fracture on the patient's right: the demo model calls that hip, not the other
FRACTURED_RIGHT = {"fracture": "neck", "side": "right", "subtlety": {"neck": (0.0, 0.15)}}
TOP_BAND = 0.15  # the R/L markers sit in the top rows: left out of every region
MIDLINE_MARGIN = 3  # the dashed white midline: columns this close to it are left out


def warm_pixels(rgb: np.ndarray) -> int:
    """Pixels in the red-orange-yellow of the heatmap's hot end (the radiograph itself is grey)."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    return int(np.count_nonzero((r - b >= 40) & (r >= g)))


def hip_regions(width: int, height: int, midline: float, image_left_is: str) -> dict[str, tuple[slice, slice]]:
    """(rows, columns) of each patient side's hip in an overlay of the radiograph's size, without the
    marker band and the midline."""
    rows = slice(round(height * TOP_BAND), height)
    mid = round(midline)
    left, right = slice(0, mid - MIDLINE_MARGIN), slice(mid + MIDLINE_MARGIN + 1, width)
    other = "left" if image_left_is == "right" else "right"
    return {image_left_is: (rows, left), other: (rows, right)}


@pytest.fixture(scope="module")
def read(tmp_path_factory):
    """One phantom through the demo model: the display image, the split, the CAM and the verdicts."""
    path = tmp_path_factory.mktemp("heatmap") / "fractured-right.png"
    Image.fromarray(phantom(SEED, 0, size=SIZE, **FRACTURED_RIGHT)[0]).save(path)
    bundle = load_bundle()
    with open_backend("onnxruntime", bundle) as backend:
        pipeline = Pipeline(bundle, backend)
        loaded = pipeline.load(path)
        assert loaded.prepared is not None, loaded.result.error or loaded.result.eligibility
        logits, cam = backend.infer(loaded.prepared.batch)
    pixels = loaded.radiograph.pixels
    sides = side_verdicts(loaded.prepared, logits, cam, bundle.threshold, pixels.shape, loaded.radiograph.scale,
                          bundle.calibration)
    return {"display": display_image(pixels), "cols": pixels.shape[1], "prepared": loaded.prepared, "cam": cam,
            "sides": sides}


def overlay(read, suspected: set[str], mode: str) -> np.ndarray:
    """The overlay's image part (the caption band below it cut off) with ``suspected`` hips called."""
    sides = [dataclasses.replace(s, fracture=s.side in suspected) for s in read["sides"]]
    image = render(read["display"], read["cols"], read["prepared"], read["cam"], sides, heatmap=mode)
    w, h = read["display"].size
    return np.asarray(image)[:h, :w]


def regions_of(read) -> dict[str, tuple[slice, slice]]:
    w, h = read["display"].size
    prepared = read["prepared"]
    return hip_regions(w, h, prepared.midline_x * w / read["cols"], prepared.image_left_is)


@pytest.mark.parametrize("called", ["right", "left"])
def test_suspected_mode_leaves_the_other_hip_plain_and_all_mode_colours_it(read, called):
    plain = np.asarray(read["display"].convert("RGB"))
    assert warm_pixels(plain) == 0  # the radiograph alone has no heatmap colour
    other = "left" if called == "right" else "right"
    regions = regions_of(read)
    suspected, everywhere = overlay(read, {called}, "suspected"), overlay(read, {called}, "all")
    area = plain[regions[other]].shape[0] * plain[regions[other]].shape[1]

    # the hip without a suspected fracture: exactly the radiograph in "suspected" mode, coloured in "all"
    assert np.array_equal(suspected[regions[other]], plain[regions[other]])
    assert warm_pixels(everywhere[regions[other]]) > 0.01 * area
    # the suspected hip carries the same heatmap in both modes
    assert warm_pixels(suspected[regions[called]]) > 0.01 * area
    assert np.array_equal(suspected[regions[called]], everywhere[regions[called]])


def test_suspected_mode_without_a_suspected_hip_has_no_heatmap_and_with_both_equals_all(read):
    plain = np.asarray(read["display"].convert("RGB"))
    none_called = overlay(read, set(), "suspected")
    for rows, cols in regions_of(read).values():
        assert np.array_equal(none_called[rows, cols], plain[rows, cols])
    assert np.array_equal(overlay(read, {"right", "left"}, "suspected"), overlay(read, set(), "all"))
    assert warm_pixels(overlay(read, set(), "all")) > warm_pixels(overlay(read, {"right"}, "suspected")) > 0


@pytest.mark.parametrize("mode", ["both", "", "ALL", None])
def test_an_unknown_heatmap_mode_is_refused(read, mode):
    assert HEATMAP_MODES == ("suspected", "all")
    with pytest.raises(ValueError, match="heatmap must be one of"):
        overlay(read, {"right"}, mode)


# -- through the command line -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    """``hipcad predict --heatmap suspected`` and ``--heatmap all`` on the same phantom: mode -> (record, overlay)."""
    work = tmp_path_factory.mktemp("predict-heatmap")
    path = work / "fractured-right.jpg"
    Image.fromarray(phantom(SEED, 2, size=SIZE, **FRACTURED_RIGHT)[0]).save(path, quality=95)  # left: p 0.007
    out = {}
    for mode in HEATMAP_MODES:
        proc = run_cli("predict", str(path), "--json", "--backend", "onnxruntime", "--heatmap", mode,
                       "--out", str(work / mode), timeout=300)
        assert proc.returncode == 0, proc.stderr
        record = json.loads(proc.stdout)
        out[mode] = record, np.asarray(Image.open(record["overlay"]).convert("RGB"))
    return out


def test_predict_heatmap_option_decides_which_hips_are_coloured(predicted):
    record = predicted["suspected"][0]
    assert record["eligible"] is True
    called = {s["side"]: s["fracture"] for s in record["sides"]}
    assert called == {"right": True, "left": False}, record["sides"]  # the phantom's fracture, and only it
    assert [s["fracture"] for s in predicted["all"][0]["sides"]] == [s["fracture"] for s in record["sides"]]
    meta = record["metadata"]
    w, h = meta["columns"], meta["rows"]
    assert predicted["suspected"][1].shape[1] == w  # the overlay is the radiograph's size (under 1024 px)
    regions = hip_regions(w, h, meta["midline_x"], meta["image_left_is_patient"])
    area = (h - regions["left"][0].start) * (regions["left"][1].stop - regions["left"][1].start)
    suspected, everywhere = predicted["suspected"][1][:h], predicted["all"][1][:h]
    assert warm_pixels(suspected[regions["left"]]) == 0
    assert warm_pixels(everywhere[regions["left"]]) > 0.01 * area
    assert warm_pixels(suspected[regions["right"]]) > 0.01 * area
    assert warm_pixels(everywhere[regions["right"]]) > 0.01 * area


def test_predict_refuses_an_unknown_heatmap_mode(tmp_path):
    proc = run_cli("predict", str(tmp_path / "none.jpg"), "--heatmap", "both", timeout=120)
    assert proc.returncode == 2
    assert "--heatmap: invalid choice: 'both'" in proc.stderr and "'suspected', 'all'" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
