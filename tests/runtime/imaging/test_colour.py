"""Colour content measured before the grey conversion: grey stored as RGB is no colour, a
photograph is, a tinted monochrome film is a tint; every decoder fills Radiograph.colour."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hipcad.runtime.imaging.colour import colour_content
from hipcad.runtime.imaging.decode import decode


def grey(rows: int = 300, cols: int = 400) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    return np.clip(40 + 160 * xx / cols + 30 * np.sin(yy / 9.0), 0, 255).astype(np.uint8)


def photograph(rows: int = 300, cols: int = 400, seed: int = 0) -> np.ndarray:
    """Random colour blobs over a random colour field, like a scene photograph."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (rows // 20, cols // 20, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((cols, rows), Image.BILINEAR))


def sepia(g: np.ndarray) -> np.ndarray:
    t = g.astype(np.float32) / 255.0
    return np.clip(np.stack([t * 255, t * 220 + 10, t * 170 + 5], axis=-1), 0, 255).astype(np.uint8)


def test_grey_stored_as_rgb_has_no_colour():
    stats = colour_content(np.repeat(grey()[..., None], 3, axis=2))
    assert stats["colour_fraction"] == 0.0 and stats["coloured_fraction"] == 0.0 and not stats["tint"]
    assert stats["colourfulness"] == 0.0


def test_a_photograph_is_colour():
    stats = colour_content(photograph())
    assert stats["colour_fraction"] > 0.5 and stats["unexplained_fraction"] > 0.3 and not stats["tint"]
    assert stats["colourfulness"] > 30


def test_a_sepia_tint_is_a_tint():
    stats = colour_content(sepia(grey()))
    assert stats["tint"] is True and stats["coloured_fraction"] > 0.5 and stats["colour_fraction"] == 0.0


def test_ybr_and_16bit_and_degenerate_inputs():
    g = grey()
    ybr = np.stack([g, np.full_like(g, 128), np.full_like(g, 128)], axis=-1)  # grey in YCbCr
    assert colour_content(ybr, "YBR_FULL")["colour_fraction"] == 0.0
    wide = photograph().astype(np.uint16) * 16  # 12-bit values in 16-bit words
    assert colour_content(wide, top=4095)["colour_fraction"] > 0.5
    assert colour_content(g)["samples"] == 0  # not a colour image
    assert colour_content(np.zeros((0, 5, 3), np.uint8))["colour_fraction"] == 0.0
    assert colour_content(np.zeros((1, 1, 3), np.uint8))["colour_fraction"] == 0.0


def test_subsampling_bounds_the_cost():
    stats = colour_content(photograph(2000, 3000), max_samples=10_000)
    assert stats["samples"] <= 10_000 and stats["colour_fraction"] > 0.5


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_jpeg_and_png_colour_is_measured_before_the_grey_conversion(tmp_path, fmt):
    suffix = {"jpeg": ".jpg", "png": ".png"}[fmt]
    photo, film, rgb_grey, plain = (tmp_path / f"{n}{suffix}" for n in ("photo", "film", "rgbgrey", "grey"))
    Image.fromarray(photograph(1200, 1600)).save(photo)
    Image.fromarray(sepia(grey(1200, 1600))).save(film)
    Image.fromarray(np.repeat(grey()[..., None], 3, axis=2)).save(rgb_grey)
    Image.fromarray(grey()).save(plain)
    assert decode(photo, min_side=300).colour["colour_fraction"] > 0.5
    assert decode(film).colour["tint"] is True
    assert decode(rgb_grey).colour["colour_fraction"] == 0.0
    assert decode(plain).colour is None


def test_dicom_colour_is_measured_before_the_grey_conversion(tmp_path):
    pytest.importorskip("pydicom")
    from tests.helpers import dicom_dataset

    def rgb_dicom(arr: np.ndarray, path):
        dicom_dataset(arr, sop="1.2.840.10008.5.1.4.1.1.7", Modality="OT").save_as(path, enforce_file_format=True)
        return path

    photo = decode(rgb_dicom(photograph(), tmp_path / "photo.dcm"))
    assert photo.colour["colour_fraction"] > 0.5 and photo.metadata["samples_per_pixel"] == 3
    assert decode(rgb_dicom(np.repeat(grey()[..., None], 3, axis=2), tmp_path / "g.dcm")).colour["colour_fraction"] == 0.0



@pytest.mark.parametrize("name", ["examples_palette.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle_16bit.dcm",
                                  "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_rle_32bit.dcm"])
def test_pydicoms_colour_files_are_colour(name):
    """pydicom's palette, RGB (8/16/32-bit) and YBR sample images (colour bars)."""
    pydicom = pytest.importorskip("pydicom")
    from pathlib import Path

    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    if not path.exists():
        pytest.skip(f"this pydicom does not ship {name}")
    rad = decode(path)
    assert rad.colour is not None and rad.colour["coloured_fraction"] > 0.05, rad.colour
