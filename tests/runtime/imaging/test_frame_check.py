"""The compressed frame's own header checked before any codec runs (imaging.frame_check)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hipcad.runtime.errors import BadInputError
from hipcad.runtime.imaging.decode import decode
from hipcad.runtime.imaging.frame_check import check_jp2_boxes, j2k_size, jpeg_frame_header
from tests.fuzz import cases


def compressed(tmp_path, syntax, rows=40, cols=48, **header):
    ds = cases.base_dataset(rows, cols, 16, name=f"fc-{syntax}")
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = (np.frombuffer(ds.PixelData, np.uint16) & 0x0FFF).tobytes()
    ds.compress(syntax, generate_instance_uid=False)
    for key, value in header.items():
        setattr(ds, key, value)
    path = tmp_path / "f.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_jpegls_height_zero_is_refused_at_once(tmp_path):
    path = cases.make_jpegls_height0(tmp_path / "h0.dcm")
    start = time.monotonic()
    with pytest.raises(BadInputError, match="frame header declares 0 rows"):
        decode(path)
    assert time.monotonic() - start < 10  # the codec would have allocated for ever


@pytest.mark.parametrize("tail", ["0d0a870a", "0d0a8708"])  # the signature; one pydicom takes for it (atheris)
def test_a_jp2_box_of_length_zero_is_refused(tmp_path, tail):
    with pytest.raises(BadInputError, match="JP2 header has a box of length 0"):
        decode(cases.make_j2k_jp2box(tmp_path / "jp2.dcm", signature_tail=tail))


@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"])
def test_a_codestream_larger_than_the_header_is_refused_before_decoding(tmp_path, syntax):
    assert decode(compressed(tmp_path, syntax)).original_shape == (40, 48)
    with pytest.raises(BadInputError, match="the compressed image is 48 x 40 pixels but the DICOM header says 48 x 20"):
        decode(compressed(tmp_path, syntax, Rows=20))


def test_components_must_match_samples_per_pixel(tmp_path):
    path = compressed(tmp_path, "1.2.840.10008.1.2.4.80", SamplesPerPixel=3, PhotometricInterpretation="RGB",
                      PlanarConfiguration=0)
    with pytest.raises(BadInputError, match="1 component"):
        decode(path)


def test_marker_walk():
    sof = b"\xff\xc0\x00\x0b\x08\x00\x10\x00\x20\x01\x01\x11\x00"
    app = b"\xff\xe0\x00\x04ab"
    assert jpeg_frame_header(b"\xff\xd8" + app + b"\xff\xff" + sof) == (16, 32, 1)
    assert jpeg_frame_header(b"\xff\xd8\xff\xda\x00\x02") is None  # a scan before any frame header
    assert jpeg_frame_header(b"\xff\xd8\xff\xe0\x00\x00") is None  # a length below 2
    assert jpeg_frame_header(b"\xff\xd8" + sof[:6]) is None  # truncated
    assert jpeg_frame_header(b"not a jpeg") is None
    assert j2k_size(b"\xff\x4f\xff\x51" + b"\x00" * 4 + (100).to_bytes(4, "big") + (50).to_bytes(4, "big")
                    + b"\x00" * 24 + (1).to_bytes(2, "big") + b"\x07") == (50, 100, 1)
    check_jp2_boxes(b"\xff\x4f\xff\x51")  # a plain codestream: nothing to check
    signature = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
    check_jp2_boxes(signature + b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 " + b"\x00\x00\x00\x08jp2c")
    with pytest.raises(BadInputError, match="no codestream box"):
        check_jp2_boxes(signature + b"\x00\x00\x00\x14ftypjp2 \x00\x00\x00\x00jp2 ")
