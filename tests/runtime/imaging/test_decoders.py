"""The faster decoders hipcad prefers (libjpeg-turbo for JPEG Lossless, CharLS for JPEG-LS, OpenJPH
for HTJ2K) give exactly the stored values of pydicom's default plugin (pylibjpeg), on files made by
real encoders at every predictor, bit depth and signedness; a missing one falls back."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom import uid as UID  # noqa: E402
from pydicom.encaps import encapsulate  # noqa: E402
from pydicom.pixels import get_decoder  # noqa: E402

from hipcad.runtime.imaging import decoders, transfer_syntaxes  # noqa: E402
from hipcad.runtime.imaging.dicom import read_dicom_pixels  # noqa: E402
from tests.helpers import dicom_dataset  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROWS, COLS = 157, 129  # odd sizes: no block or tile alignment to hide behind


def extreme_image(bits: int, signed: bool, seed: int = 0) -> np.ndarray:
    """Noise over the whole range, with runs of the minimum and maximum and a sharp edge."""
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    rng = np.random.default_rng(seed)
    arr = rng.integers(lo, hi, size=(ROWS, COLS), endpoint=True)
    arr[:20] = lo
    arr[20:40] = hi
    arr[60:, :64] = (lo + hi) // 2
    dtype = f"{'i' if signed else 'u'}{1 if bits <= 8 else 2}"
    return arr.astype(dtype)


def encode_tool(tmp_path, ds, *args) -> str:
    if shutil.which(args[0]) is None:
        pytest.skip(f"{args[0]} is not installed")
    src, out = tmp_path / "src.dcm", tmp_path / "out.dcm"
    ds.save_as(src, enforce_file_format=True)
    proc = subprocess.run([*args, str(src), str(out)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return str(out)


def encode_htj2k(tmp_path, ds, arr) -> str:
    imagecodecs = pytest.importorskip("imagecodecs")
    ds.file_meta.TransferSyntaxUID = UID.HTJ2KLossless
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(arr)])
    ds.save_as(tmp_path / "out.dcm", enforce_file_format=True)
    return str(tmp_path / "out.dcm")


# (id, bits, signed, encoder)
CASES = [
    *[(f"jpeg-lossless-sv{sv}-{bits}bit", bits, False, ("dcmcjpeg", "+el", "+sv", str(sv)))
      for bits in (8, 12, 16) for sv in range(1, 8)],
    ("jpeg-lossless-sv1-16bit-signed", 16, True, ("dcmcjpeg", "+e1")),
    ("jpeg-lossless-sv1-12bit-signed", 12, True, ("dcmcjpeg", "+e1")),
    ("jpeg-lossless-gdcmconv-12bit", 12, False, ("gdcmconv", "--quiet", "--jpeg", "--lossless")),
    ("jpegls-lossless-8bit", 8, False, ("dcmcjpls", "+el")),
    ("jpegls-lossless-12bit", 12, False, ("dcmcjpls", "+el")),
    ("jpegls-lossless-16bit", 16, False, ("dcmcjpls", "+el")),
    ("jpegls-lossless-16bit-signed", 16, True, ("dcmcjpls", "+el")),
    ("jpegls-near-lossless-12bit", 12, False, ("dcmcjpls", "+en", "+md", "3")),
    ("htj2k-8bit", 8, False, "htj2k"),
    ("htj2k-12bit", 12, False, "htj2k"),
    ("htj2k-16bit", 16, False, "htj2k"),
    ("htj2k-12bit-signed", 12, True, "htj2k"),
    ("htj2k-16bit-signed", 16, True, "htj2k"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_preferred_decoder_is_exact_with_pydicoms_default(tmp_path, case):
    _, bits, signed, encoder = case
    arr = extreme_image(bits, signed)
    ds = dicom_dataset(arr, bits)
    path = encode_htj2k(tmp_path, ds, arr) if encoder == "htj2k" else encode_tool(tmp_path, ds, *encoder)
    encoded = pydicom.dcmread(path)
    ts = encoded.file_meta.TransferSyntaxUID
    preferred = decoders.PREFERRED[ts]
    decoders.register_plugins()
    if preferred not in get_decoder(ts).available_plugins:
        pytest.skip(f"{preferred} is not installed here")
    assert decoders.plugin_order(ts)[0] == preferred
    assert transfer_syntaxes.status_for(ts).decoder == preferred
    reference, _ = get_decoder(ts).as_array(pydicom.dcmread(path), index=0, decoding_plugin="pylibjpeg")
    fast, _ = get_decoder(ts).as_array(pydicom.dcmread(path), index=0, decoding_plugin=preferred)
    assert fast.dtype == reference.dtype and np.array_equal(fast, reference)
    stored = read_dicom_pixels(path).stored  # what hipcad decodes, with its plugin order
    assert np.array_equal(stored, reference)
    if "near" not in case[0]:
        assert np.array_equal(stored, arr)  # lossless: the original values


def test_a_missing_or_failing_preferred_decoder_falls_back(tmp_path, monkeypatch):
    arr = extreme_image(12, False)
    path = encode_tool(tmp_path, dicom_dataset(arr, 12), "dcmcjpeg", "+e1")
    ts = UID.JPEGLosslessSV1
    decoders.register_plugins()
    if "libjpeg-turbo" not in get_decoder(ts).available_plugins:
        pytest.skip("libjpeg-turbo (imagecodecs) is not installed here")
    from hipcad.runtime.imaging import imagecodecs_plugin

    def broken(src, runner):
        raise RuntimeError("decoder crashed")

    # a failing plugin: pydicom's own order takes over
    monkeypatch.setitem(get_decoder(ts)._available, "libjpeg-turbo", broken)
    assert np.array_equal(read_dicom_pixels(path).stored, arr)
    monkeypatch.undo()
    # a missing one: the status table names the plugin that is used instead
    monkeypatch.delitem(get_decoder(ts)._available, "libjpeg-turbo")
    assert decoders.plugin_in_use(ts) == "pylibjpeg" and transfer_syntaxes.status_for(ts).decoder == "pylibjpeg"
    assert np.array_equal(read_dicom_pixels(path).stored, arr)
    assert imagecodecs_plugin.is_available("1.2.840.10008.1.2.4.50") is False  # not offered for lossy JPEG


def test_colour_frames_are_left_to_pydicoms_plugins(tmp_path):
    """hipcad's imagecodecs plugins decode grey frames only; a colour lossless JPEG still decodes."""
    rgb = np.random.default_rng(1).integers(0, 255, (ROWS, COLS, 3), endpoint=True).astype(np.uint8)
    ds = dicom_dataset(rgb)
    path = encode_tool(tmp_path, ds, "dcmcjpeg", "+e1")
    assert np.array_equal(read_dicom_pixels(path).stored, rgb)


def test_status_table_names_the_plugin_in_use():
    for status in transfer_syntaxes.codec_status():
        if not UID.UID(status.uid).is_encapsulated:
            assert status.decoder is None
        elif status.available:
            assert status.decoder in status.plugins
