"""DICOM decoding: every supported transfer syntax (files made by real encoders at test time),
the grayscale pipeline against pydicom's own functions, limits, broken files and metadata."""

from __future__ import annotations

import logging
import shutil
import subprocess

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom import uid as UID  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402

from hipcad.runtime.errors import BadInputError, CodecUnavailableError, InputTooLargeError  # noqa: E402
from hipcad.runtime.imaging import transfer_syntaxes  # noqa: E402
from hipcad.runtime.imaging.dicom import ROBUST_PERCENTILES, decode_dicom, read_dicom_pixels  # noqa: E402
from hipcad.runtime.imaging.limits import DecodeLimits  # noqa: E402
from hipcad.runtime.imaging.radiograph import METADATA_KEYS, PATIENT_KEYS  # noqa: E402

# Writing the hostile test values makes pydicom warn at write time (decode_dicom itself is quiet).
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")

ROWS, COLS = 200, 256
DISC_CENTER, DISC_RADIUS = (100, 150), 40
YY, XX = np.mgrid[0:ROWS, 0:COLS]
DISC = (YY - DISC_CENTER[0]) ** 2 + (XX - DISC_CENTER[1]) ** 2 <= DISC_RADIUS**2
# Background away from the disc, left and right ends of the gradient.
LEFT = (slice(150, 200), slice(0, 40))
RIGHT = (slice(0, 50), slice(216, 256))


# ------------------------------------------------------------------------------------ helpers


def phantom(bits: int = 12, signed: bool = False, seed: int = 0) -> np.ndarray:
    """A horizontal gradient (5%..60% of the range) with mild texture plus a bright disc (95%)."""
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    span = hi - lo
    rng = np.random.default_rng(seed)
    img = lo + span * (0.05 + 0.55 * XX / (COLS - 1)) + rng.normal(0, span * 0.01, (ROWS, COLS))
    img[DISC] = lo + 0.95 * span + rng.normal(0, span * 0.005, int(DISC.sum()))
    dtype = f"{'i' if signed else 'u'}{1 if bits <= 8 else 2}"
    return np.clip(np.rint(img), lo, hi).astype(dtype)


def make_ds(arr: np.ndarray, bits: int = 12, photometric: str = "MONOCHROME2", **elements) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray, for presentation
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.1234.1"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.1234.2"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.1234.3"
    ds.Modality = "DX"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P123"
    ds.PatientBirthDate = "19400101"
    ds.StudyDate = "20240102"
    ds.AccessionNumber = "ACC9"
    ds.BodyPartExamined = "PELVIS"
    ds.ViewPosition = "AP"
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "B"
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 1 if arr.ndim == 2 else arr.shape[2]
    if ds.SamplesPerPixel > 1:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = arr.tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    return ds


def save(ds: Dataset, path) -> str:
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def run_tool(*args: str) -> None:
    if shutil.which(args[0]) is None:
        pytest.skip(f"{args[0]} is not installed (dcmtk / gdcm)")
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(args)} failed: {proc.stderr}"


def read_bytes(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def assert_geometry(pixels: np.ndarray) -> None:
    """Bright disc where it was drawn, gradient dark on the left, brighter on the right."""
    assert pixels.shape == (ROWS, COLS) and pixels.dtype == np.uint8
    disc, outside = pixels[DISC].mean(), pixels[~DISC].mean()
    assert disc > 200 and disc > outside + 60, (disc, outside)
    assert pixels[RIGHT].mean() > pixels[LEFT].mean() + 60


def reference(ds: Dataset, arr: np.ndarray, pydicom_voi_lut: bool = False) -> np.ndarray:
    """pydicom's modality + VOI functions in float64 on the image, then hipcad's documented scaling.

    A VOI LUT Sequence is applied by plain indexing unless ``pydicom_voi_lut`` (pydicom 3.0's
    ``apply_voi`` wraps the indices of 8-bit LUTs longer than 256 entries).
    """
    m = apply_modality_lut(arr, ds)
    if ds.get("VOILUTSequence"):
        item = ds.VOILUTSequence[0]
        nr_entries, first_map, bits = item.LUTDescriptor
        entries = np.asarray(list(item.LUTData), dtype=np.int64)
        if pydicom_voi_lut:
            v = apply_voi_lut(m, ds).astype(np.float64)
        else:
            v = entries[np.clip(m.astype(np.int64) - first_map, 0, nr_entries - 1)].astype(np.float64)
        bits = min(bits, max(8, int(entries.max()).bit_length()))
        lo, hi = 0.0, 2.0**bits - 1
    elif "WindowCenter" in ds:
        v = apply_voi_lut(m, ds).astype(np.float64)
        lo, hi = apply_voi_lut(np.array([-np.inf, np.inf]), ds)
    else:
        v = m.astype(np.float64)
        lo, hi = np.percentile(v, ROBUST_PERCENTILES, method="inverted_cdf")
    out = np.rint(np.clip((v - lo) * (255.0 / (hi - lo)), 0, 255)).astype(np.uint8)
    return 255 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


# ------------------------------------------------------------------------------- encoders


def enc_pydicom(ts, **kwargs):
    def encode(ds, src, out):
        ds.compress(ts, **kwargs)
        return save(ds, out)

    return encode


def enc_tool(*args):
    def encode(ds, src, out):
        run_tool(*args, src, str(out))
        return str(out)

    return encode


def enc_save_as(ts):
    def encode(ds, src, out):
        ds.file_meta.TransferSyntaxUID = ts
        return save(ds, out)

    return encode


# (id, source bits, encoder, expected transfer syntax, max abs error of stored values)
CODEC_CASES = [
    ("implicit-le", 12, enc_save_as(UID.ImplicitVRLittleEndian), UID.ImplicitVRLittleEndian, 0),
    ("explicit-le", 12, enc_save_as(UID.ExplicitVRLittleEndian), UID.ExplicitVRLittleEndian, 0),
    ("explicit-be-dcmconv", 12, enc_tool("dcmconv", "+tb"), UID.ExplicitVRBigEndian, 0),
    ("deflated", 12, enc_save_as(UID.DeflatedExplicitVRLittleEndian), UID.DeflatedExplicitVRLittleEndian, 0),
    ("deflated-dcmconv", 12, enc_tool("dcmconv", "+td"), UID.DeflatedExplicitVRLittleEndian, 0),
    # dcmcjpeg's lossy modes rescale to the image's min..max unless +sr (use the full range)
    ("jpeg-baseline-dcmcjpeg", 8, enc_tool("dcmcjpeg", "+eb", "+q", "95", "+sr"), UID.JPEGBaseline8Bit, 16),
    ("jpeg-extended12-dcmcjpeg", 12, enc_tool("dcmcjpeg", "+ee", "+q", "95", "+sr"), UID.JPEGExtended12Bit, 32),
    ("jpeg-lossless-p14-dcmcjpeg", 12, enc_tool("dcmcjpeg", "+el", "+sv", "6"), UID.JPEGLossless, 0),
    ("jpeg-lossless-sv1-dcmcjpeg", 12, enc_tool("dcmcjpeg", "+e1"), UID.JPEGLosslessSV1, 0),
    ("jpeg-lossless-sv1-16bit-dcmcjpeg", 16, enc_tool("dcmcjpeg", "+e1"), UID.JPEGLosslessSV1, 0),
    ("jpegls-lossless", 12, enc_pydicom(UID.JPEGLSLossless), UID.JPEGLSLossless, 0),
    ("jpegls-lossless-dcmcjpls", 12, enc_tool("dcmcjpls", "+el"), UID.JPEGLSLossless, 0),
    ("jpegls-near-lossless", 12, enc_pydicom(UID.JPEGLSNearLossless, jls_error=3), UID.JPEGLSNearLossless, 3),
    ("j2k-lossless", 12, enc_pydicom(UID.JPEG2000Lossless), UID.JPEG2000Lossless, 0),
    ("j2k-lossless-16bit", 16, enc_pydicom(UID.JPEG2000Lossless), UID.JPEG2000Lossless, 0),
    ("j2k-lossy", 12, enc_pydicom(UID.JPEG2000, j2k_cr=[15]), UID.JPEG2000, 250),
    ("j2k-lossy-gdcmconv", 12, enc_tool("gdcmconv", "--quiet", "--j2k", "--lossy", "-r", "10"), UID.JPEG2000, 250),
    ("rle", 12, enc_pydicom(UID.RLELossless), UID.RLELossless, 0),
    ("rle-gdcmconv", 12, enc_tool("gdcmconv", "--rle"), UID.RLELossless, 0),
]


@pytest.mark.parametrize("case", CODEC_CASES, ids=[c[0] for c in CODEC_CASES])
def test_transfer_syntax_decodes(tmp_path, case):
    _, bits, encode, ts, max_err = case
    src_arr = phantom(bits)
    src = save(make_ds(src_arr, bits), tmp_path / "src.dcm")
    out = encode(make_ds(src_arr, bits), src, tmp_path / "out.dcm")
    assert pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts

    stored = read_dicom_pixels(out).stored
    assert stored.shape == (ROWS, COLS)
    err = np.abs(stored.astype(np.int64) - src_arr.astype(np.int64))
    assert err.max() <= max_err, err.max()
    if max_err:  # lossy: close on average too (the phantom's texture is a 1 % noise)
        assert err.mean() <= 0.01 * 2**bits, err.mean()

    rad = decode_dicom(out)
    assert rad.metadata["transfer_syntax"] == ts
    assert rad.original_shape == (ROWS, COLS) and rad.source_format == "dicom"
    assert_geometry(rad.pixels)
    plain = decode_dicom(src).pixels
    diff = np.abs(rad.pixels.astype(int) - plain.astype(int))
    if max_err == 0:
        assert np.array_equal(rad.pixels, plain)
    else:
        assert diff.mean() < 2.0, diff.mean()


@pytest.mark.parametrize("case", CODEC_CASES, ids=[c[0] for c in CODEC_CASES])
def test_reduced_decoding_for_every_transfer_syntax(tmp_path, case):
    """With min_side, every syntax gives the half-size image: JPEG 2000 from its wavelet levels
    (the stored frame is already small), the others binned after decoding."""
    _, bits, encode, ts, max_err = case
    src_arr = phantom(bits)
    src = save(make_ds(src_arr, bits), tmp_path / "src.dcm")
    out = encode(make_ds(src_arr, bits), src, tmp_path / "out.dcm")
    stored = read_dicom_pixels(out, min_side=ROWS // 2).stored
    assert stored.shape == ((ROWS // 2, COLS // 2) if "j2k" in case[0] else (ROWS, COLS))
    small = decode_dicom(out, min_side=ROWS // 2)
    assert small.pixels.shape == (ROWS // 2, COLS // 2) and small.original_shape == (ROWS, COLS) and small.scale == 0.5
    means = decode_dicom(out).pixels.astype(float).reshape(ROWS // 2, 2, COLS // 2, 2).mean(axis=(1, 3))
    # the same picture: JPEG 2000's wavelet low-pass is smoother than a block mean, which moves the
    # robust display range (percentiles) by a few grey levels
    assert np.abs(small.pixels - means).mean() < 5.0
    assert np.corrcoef(small.pixels.ravel(), means.ravel())[0, 1] > (0.99 if max_err == 0 else 0.95)


@pytest.mark.parametrize(
    "bits,signed",
    [(8, False), (8, True), (10, False), (12, False), (12, True), (14, False), (16, False), (16, True)],
)
def test_bit_depths_and_signedness(tmp_path, bits, signed):
    arr = phantom(bits, signed)
    path = save(make_ds(arr, bits), tmp_path / "x.dcm")
    assert np.array_equal(read_dicom_pixels(path).stored, arr)
    rad = decode_dicom(path)
    assert_geometry(rad.pixels)
    ds = pydicom.dcmread(path)
    assert np.array_equal(rad.pixels, reference(ds, ds.pixel_array))


@pytest.mark.parametrize("window", [{}, {"WindowCenter": 600_000, "WindowWidth": 500_000}], ids=["robust", "window"])
def test_32bit_pixels(tmp_path, window):
    arr = phantom(16).astype(np.uint32) * 16  # 20 bits stored in 32 allocated: no table, direct math
    path = save(make_ds(arr, 20, **window), tmp_path / "x.dcm")
    rad = decode_dicom(path)
    assert_geometry(rad.pixels)
    ds = pydicom.dcmread(path)
    assert np.array_equal(rad.pixels, reference(ds, ds.pixel_array))


def test_signed_lossless_codecs(tmp_path):
    arr = phantom(16, signed=True)
    for ts in (UID.JPEG2000Lossless, UID.JPEGLSLossless, UID.RLELossless):
        ds = make_ds(arr, 16)
        ds.compress(ts)
        path = save(ds, tmp_path / "s.dcm")
        assert np.array_equal(read_dicom_pixels(path).stored, arr), ts.name
        assert_geometry(decode_dicom(path).pixels)


def test_unused_high_bits_are_ignored(tmp_path):
    arr = phantom(12)
    dirty = arr | np.uint16(0xA000)  # overlay-style garbage above Bits Stored
    clean = decode_dicom(save(make_ds(arr, 12), tmp_path / "c.dcm")).pixels
    assert np.array_equal(decode_dicom(save(make_ds(dirty, 12), tmp_path / "d.dcm")).pixels, clean)


# ----------------------------------------------------------------------- grayscale pipeline


def test_monochrome1_comes_out_bone_bright(tmp_path):
    arr = phantom(12)
    inverted = (4095 - arr).astype(np.uint16)  # MONOCHROME1: low stored value = bright
    rad = decode_dicom(save(make_ds(inverted, 12, "MONOCHROME1"), tmp_path / "m1.dcm"))
    assert_geometry(rad.pixels)
    mono2 = decode_dicom(save(make_ds(arr, 12), tmp_path / "m2.dcm")).pixels
    assert np.abs(rad.pixels.astype(int) - mono2.astype(int)).max() <= 2

    # With a window (reflected), the result is exactly the MONOCHROME2 one.
    reflected = make_ds(inverted, 12, "MONOCHROME1", WindowCenter=4095 - 1800 + 1, WindowWidth=2000)
    w1 = decode_dicom(save(reflected, tmp_path / "w1.dcm"))
    w2 = decode_dicom(save(make_ds(arr, 12, WindowCenter=1800, WindowWidth=2000), tmp_path / "w2.dcm"))
    assert_geometry(w1.pixels)
    assert np.abs(w1.pixels.astype(int) - w2.pixels.astype(int)).max() <= 1


def voi_lut_item(entries: np.ndarray, first_map: int, bits: int) -> Dataset:
    item = Dataset()
    item.add_new(0x00283002, "US", [len(entries), first_map, bits])  # LUT Descriptor
    item.LUTExplanation = "test"
    item.add_new(0x00283006, "US", [int(v) for v in entries])  # LUT Data
    return item


def test_voi_lut_sequence_is_honoured(tmp_path):
    arr = phantom(12)
    # A threshold LUT over 8-bit output that never goes above 127: the result must follow
    # the LUT (two levels, 0 and 127 of 255), not be stretched to the image's min/max.
    entries = np.where(np.arange(4096) < 2600, 0, 127)
    ds = make_ds(arr, 12, WindowCenter=2048, WindowWidth=4096)  # the LUT is preferred
    ds.VOILUTSequence = Sequence([voi_lut_item(entries, 0, 8)])
    path = save(ds, tmp_path / "lut.dcm")
    pixels = decode_dicom(path).pixels
    assert set(np.unique(pixels)) == {0, 127}
    assert (pixels[DISC] == 127).all() and (pixels[LEFT] == 0).all()
    assert np.array_equal(pixels, reference(pydicom.dcmread(path), arr))


def test_voi_lut_16bit_declared_12bit_used(tmp_path):
    arr = phantom(12)
    # Gamma-like LUT with first_map 100, declared 16 bits per entry, entries 0..4095.
    x = np.arange(3800)
    entries = np.rint(4095 * (x / x[-1]) ** 0.5).astype(int)
    ds = make_ds(arr, 12)
    ds.VOILUTSequence = Sequence([voi_lut_item(entries, 100, 16)])
    path = save(ds, tmp_path / "lut16.dcm")
    pixels = decode_dicom(path).pixels
    assert_geometry(pixels)
    ds = pydicom.dcmread(path)
    assert np.array_equal(pixels, reference(ds, arr))
    assert np.array_equal(pixels, reference(ds, arr, pydicom_voi_lut=True))
    assert pixels[DISC].mean() > 250  # stored values >= 3900 hit the LUT's last entry (4095 -> 255)


def test_voi_lut_signed_first_value_mapped(tmp_path):
    """Signed data: the LUT's first value mapped is SS (-2048), whether read as SS or as US (63488)."""
    arr = phantom(12, signed=True)
    entries = np.arange(4096) ** 2 // 4096  # 0..4092, 16-bit entries
    expected = entries[arr.astype(int) + 2048]
    for first_map in (-2048, 65536 - 2048):
        ds = make_ds(arr, 12)
        item = voi_lut_item(entries, 0, 16)
        item.add_new(0x00283002, "SS" if first_map < 0 else "US", [4096, first_map, 16])
        ds.VOILUTSequence = Sequence([item])
        pixels = decode_dicom(save(ds, tmp_path / "s.dcm")).pixels
        assert np.array_equal(pixels, np.rint(expected * 255 / 4095).astype(np.uint8)), first_map


@pytest.mark.parametrize("convert", [("dcmconv", "+ti"), ("dcmconv", "+tb")], ids=["implicit", "big-endian"])
def test_voi_lut_in_other_encodings(tmp_path, convert):
    """In implicit VR the LUT Data's VR is ambiguous (US or OW); in big endian its bytes swap."""
    arr = phantom(12)
    x = np.arange(4096)
    ds = make_ds(arr, 12)
    ds.VOILUTSequence = Sequence([voi_lut_item(np.rint(4095 * (x / 4095) ** 2).astype(int), 0, 16)])
    src = save(ds, tmp_path / "lut.dcm")
    run_tool(*convert, src, str(tmp_path / "conv.dcm"))
    expected = decode_dicom(src).pixels
    assert np.array_equal(decode_dicom(tmp_path / "conv.dcm").pixels, expected)
    assert_geometry(expected)


@pytest.mark.parametrize("function", [None, "LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_is_honoured(tmp_path, function):
    arr = phantom(12)
    extra = {"VOILUTFunction": function} if function else {}
    # Window 1400..2600 (stored units): the gradient mostly saturates at the left and the disc.
    ds = make_ds(arr, 12, WindowCenter=[2000, 1000], WindowWidth=[1200, 500], **extra)
    path = save(ds, tmp_path / "w.dcm")
    pixels = decode_dicom(path).pixels
    assert np.array_equal(pixels, reference(pydicom.dcmread(path), arr))
    assert_geometry(pixels)
    if function != "SIGMOID":
        assert (pixels[arr <= 1399] == 0).all() and (pixels[arr >= 2601] == 255).all()
        mid = (arr > 1450) & (arr < 2550)
        expected = (arr[mid] - 1400) / 1200 * 255
        assert np.abs(pixels[mid] - expected).max() <= 1.5
    else:
        at_center = np.abs(arr.astype(int) - 2000) <= 2
        assert np.abs(pixels[at_center].astype(int) - 128).max() <= 2
        assert pixels[DISC].mean() > 240 and pixels[LEFT].mean() < 15


def test_rescale_slope_intercept(tmp_path):
    arr = phantom(12)
    plain = decode_dicom(save(make_ds(arr, 12, WindowCenter=2000, WindowWidth=1200), tmp_path / "p.dcm")).pixels
    # The same window in rescaled units: v = 2 * stored - 1000.
    ds = make_ds(arr, 12, RescaleSlope=2, RescaleIntercept=-1000, RescaleType="US", WindowCenter=3000, WindowWidth=2400)
    path = save(ds, tmp_path / "r.dcm")
    pixels = decode_dicom(path).pixels
    assert np.array_equal(pixels, reference(pydicom.dcmread(path), arr))
    assert np.abs(pixels.astype(int) - plain.astype(int)).max() <= 1
    # Without a window: a positive-slope rescale does not change the robust-range result.
    no_window = decode_dicom(save(make_ds(arr, 12, RescaleSlope=2, RescaleIntercept=-1000), tmp_path / "n.dcm")).pixels
    base = decode_dicom(save(make_ds(arr, 12), tmp_path / "b.dcm")).pixels
    assert np.abs(no_window.astype(int) - base.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "name,bits,signed,elements,photometric",
    [
        ("robust-range", 12, False, {}, "MONOCHROME2"),
        (
            "signed-ct-like",
            16,
            True,
            {"RescaleSlope": 1, "RescaleIntercept": -1024, "WindowCenter": 40, "WindowWidth": 30000, "VOILUTFunction": "SIGMOID"},
            "MONOCHROME2",
        ),
        (
            "fractional-rescale-linear",
            14,
            False,
            {"RescaleSlope": 0.37, "RescaleIntercept": 12.5, "WindowCenter": 3000, "WindowWidth": 4000},
            "MONOCHROME1",
        ),
        ("8bit-linear-exact", 8, False, {"WindowCenter": 128, "WindowWidth": 90.5, "VOILUTFunction": "LINEAR_EXACT"}, "MONOCHROME2"),
    ],
)
def test_matches_pydicom_functions(tmp_path, name, bits, signed, elements, photometric):
    arr = phantom(bits, signed, seed=3)
    path = save(make_ds(arr, bits, photometric, **elements), tmp_path / f"{name}.dcm")
    ds = pydicom.dcmread(path)
    assert np.array_equal(decode_dicom(path).pixels, reference(ds, ds.pixel_array))


def test_robust_range_ignores_burned_in_markers(tmp_path):
    arr = phantom(12)
    marked = arr.copy()
    marked[5:15, 5:25] = 4095  # a burned-in "L" marker: 200 pixels, under 0.5 %
    a = decode_dicom(save(make_ds(arr, 12), tmp_path / "a.dcm")).pixels
    b = decode_dicom(save(make_ds(marked, 12), tmp_path / "b.dcm")).pixels
    mask = np.ones(arr.shape, bool)
    mask[5:15, 5:25] = False
    assert np.abs(a[mask].astype(int) - b[mask].astype(int)).max() <= 1
    assert a[DISC].mean() > 240 and a[LEFT].mean() < 20  # the range is used, not squeezed


def test_invalid_window_is_ignored_with_warning(tmp_path):
    arr = phantom(12)
    rad = decode_dicom(save(make_ds(arr, 12, WindowCenter=2000, WindowWidth=0), tmp_path / "w.dcm"))
    assert any("window" in w for w in rad.warnings)
    assert_geometry(rad.pixels)


# ------------------------------------------------------------------------ color, frames


def test_color_rgb_becomes_luminance_with_warning(tmp_path):
    gray = phantom(8)
    rgb = np.stack([gray, gray // 2, gray // 4], axis=-1).astype(np.uint8)
    rad = decode_dicom(save(make_ds(rgb, 8, "RGB"), tmp_path / "rgb.dcm"))
    assert any("color" in w for w in rad.warnings)
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert np.abs(rad.pixels.astype(float) - expected).max() <= 0.51


def test_color_ybr_jpeg_baseline(tmp_path):
    gray = phantom(8)
    rgb = np.stack([gray, gray, gray], axis=-1).astype(np.uint8)
    src = save(make_ds(rgb, 8, "RGB"), tmp_path / "rgb.dcm")
    out = tmp_path / "ybr.dcm"
    run_tool("dcmcjpeg", "+eb", "+q", "95", "+sr", src, str(out))  # YBR_FULL_422 by default
    rad = decode_dicom(out)
    assert any("color" in w for w in rad.warnings)
    assert np.abs(rad.pixels.astype(int) - gray.astype(int)).mean() < 2.0


def test_palette_color(tmp_path):
    gray = phantom(8)
    ramp = [int(v) for v in np.arange(256) * 257]  # a gray palette with 16-bit entries
    ds = make_ds(gray, 8, "PALETTE COLOR")
    for color in ("Red", "Green", "Blue"):
        ds.add_new(f"{color}PaletteColorLookupTableDescriptor", "US", [256, 0, 16])
        ds.add_new(f"{color}PaletteColorLookupTableData", "OW", np.asarray(ramp, "<u2").tobytes())
    rad = decode_dicom(save(ds, tmp_path / "pal.dcm"))
    assert any("PALETTE COLOR" in w for w in rad.warnings)
    assert np.abs(rad.pixels.astype(int) - gray.astype(int)).max() <= 1


def test_multiframe_uses_first_frame(tmp_path):
    first = phantom(12)
    frames = np.stack([first, np.zeros_like(first)])
    ds = make_ds(first, 12, NumberOfFrames=2)
    ds.PixelData = frames.tobytes()
    rad = decode_dicom(save(ds, tmp_path / "mf.dcm"))
    assert any("multi-frame" in w for w in rad.warnings)
    assert_geometry(rad.pixels)


# --------------------------------------------------------------------------- limits, errors


def huge_declared(tmp_path) -> str:
    ds = make_ds(phantom(12)[:10, :10], 12)
    ds.Rows, ds.Columns = 60000, 60000
    return save(ds, tmp_path / "huge.dcm")


def test_huge_declared_size_refused_before_decoding(tmp_path, monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixel data decoded despite the declared size")

    monkeypatch.setattr(Decoder, "as_array", no_decoding)
    path = huge_declared(tmp_path)
    with pytest.raises(InputTooLargeError, match="60000"):
        decode_dicom(path)
    with pytest.raises(InputTooLargeError):
        decode_dicom(read_bytes(path))
    # One frame over the limit: refused before decoding, however few frames.
    ds = make_ds(phantom(12)[:10, :10], 12, NumberOfFrames=2)
    ds.Rows, ds.Columns = 9000, 9000
    with pytest.raises(InputTooLargeError, match="81 megapixels"):
        decode_dicom(save(ds, tmp_path / "frames.dcm"))


def test_multiframe_size_limit_is_per_frame(tmp_path):
    """Only the first frame is decoded: many frames of a sane size are read (a warning says so)."""
    arr = phantom(12)
    ds = make_ds(np.concatenate([arr] * 3), 12, NumberOfFrames=3)
    ds.Rows, ds.Columns = arr.shape
    limits = DecodeLimits(max_pixels=2 * ROWS * COLS)  # 3 frames would be over, one is not
    rad = decode_dicom(save(ds, tmp_path / "frames.dcm"), limits)
    assert_geometry(rad.pixels)
    assert any("3 frames" in w and "only the first frame" in w for w in rad.warnings)
    assert rad.metadata["number_of_frames"] == 3


def test_file_size_limit(tmp_path):
    path = save(make_ds(phantom(12), 12), tmp_path / "x.dcm")
    with pytest.raises(InputTooLargeError, match="MiB"):
        decode_dicom(path, DecodeLimits(max_file_bytes=50_000))
    with pytest.raises(InputTooLargeError):
        decode_dicom(read_bytes(path), DecodeLimits(max_file_bytes=50_000))


def test_deflate_bomb_refused(tmp_path):
    ds = make_ds(phantom(12), 12)
    ds.add_new(0x00090010, "LO", "HIPCAD TEST")
    ds.add_new(0x00091010, "OB", bytes(4_000_000))  # 4 MB of zeros: deflates to a few kB
    ds.file_meta.TransferSyntaxUID = UID.DeflatedExplicitVRLittleEndian
    path = save(ds, tmp_path / "bomb.dcm")
    assert (tmp_path / "bomb.dcm").stat().st_size < 200_000
    with pytest.raises(InputTooLargeError, match="deflated"):
        decode_dicom(path, DecodeLimits(max_file_bytes=1_000_000))
    assert_geometry(decode_dicom(path).pixels)


def assert_clear(err: pytest.ExceptionInfo, pattern: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg and len(msg) < 400, msg
    assert pattern in msg, msg


def test_truncated_native_pixel_data(tmp_path):
    path = save(make_ds(phantom(12), 12), tmp_path / "x.dcm")
    data = read_bytes(path)
    (tmp_path / "t.dcm").write_bytes(data[:-5000])
    with pytest.raises(BadInputError) as err:
        decode_dicom(tmp_path / "t.dcm")
    assert_clear(err, f"pixel data truncated: expected {ROWS * COLS * 2} bytes, found {ROWS * COLS * 2 - 5000}")
    with pytest.raises(BadInputError, match="truncated"):
        decode_dicom(data[:-5000])


@pytest.mark.parametrize(
    "ts,name,damage",
    [
        (UID.JPEG2000Lossless, "JPEG 2000", lambda f: f[: len(f) // 3]),  # cut the codestream
        (UID.RLELossless, "RLE", lambda f: f[: len(f) // 3]),
        (UID.JPEGLSLossless, "JPEG-LS", lambda f: b"\x00" * 64 + f[64:]),  # no SOI / frame header
    ],
    ids=["j2k-truncated", "rle-truncated", "jpegls-no-header"],
)
def test_corrupt_compressed_pixel_data(tmp_path, ts, name, damage):
    from pydicom.encaps import encapsulate, generate_frames

    ds = make_ds(phantom(12), 12)
    ds.compress(ts)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([damage(frame)])
    with pytest.raises(BadInputError) as err:
        decode_dicom(save(ds, tmp_path / "c.dcm"))
    assert_clear(err, f"cannot decode {name}")


@pytest.mark.parametrize(
    "content,pattern",
    [
        (b"", "empty file"),
        (b"This is a text file, not an image.\nSecond line.\n" * 20, "not a DICOM file"),
        (np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes(), "not a DICOM file"),
    ],
    ids=["empty", "text", "random"],
)
def test_not_dicom(tmp_path, content, pattern):
    path = tmp_path / "file.dcm"
    path.write_bytes(content)
    for source in (path, str(path), content):
        with pytest.raises(BadInputError) as err:
            decode_dicom(source)
        assert_clear(err, pattern)


def test_random_bytes_after_dicom_prefix(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(10):
        junk = bytes(128) + b"DICM" + rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
        with pytest.raises(BadInputError) as err:
            decode_dicom(junk)
        assert "\n" not in str(err.value)


def test_corrupt_header_after_valid_meta(tmp_path):
    data = bytearray(read_bytes(save(make_ds(phantom(12), 12), tmp_path / "x.dcm")))
    start = data.index(b"DX")  # somewhere in the dataset, after the file meta
    data[start - 8 : start + 400] = np.random.default_rng(3).integers(0, 256, 408, dtype=np.uint8).tobytes()
    with pytest.raises(BadInputError) as err:
        decode_dicom(bytes(data))
    assert "\n" not in str(err.value)


def test_no_pixel_data(tmp_path):
    ds = make_ds(phantom(12), 12)
    del ds.PixelData
    with pytest.raises(BadInputError) as err:
        decode_dicom(save(ds, tmp_path / "np.dcm"))
    assert_clear(err, "DICOM has no pixel data")


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="cannot open"):
        decode_dicom(tmp_path / "nope.dcm")
    with pytest.raises(TypeError):
        decode_dicom(12345)


def test_no_preamble_is_read_with_force(tmp_path):
    data = read_bytes(save(make_ds(phantom(12), 12), tmp_path / "x.dcm"))
    rad = decode_dicom(data[132:])  # file meta + dataset, no preamble / DICM
    assert_geometry(rad.pixels)
    assert any("preamble" in w for w in rad.warnings)
    # A bare dataset (no file meta at all, implicit VR) too.
    ds = make_ds(phantom(12), 12)
    ds.file_meta.TransferSyntaxUID = UID.ImplicitVRLittleEndian
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare, implicit_vr=True, little_endian=True)  # no enforce_file_format: no meta
    assert read_bytes(bare)[128:132] != b"DICM"
    assert_geometry(decode_dicom(bare).pixels)


def test_codec_unavailable(tmp_path, monkeypatch):
    from pydicom.pixels import get_decoder

    ds = make_ds(phantom(12), 12)
    ds.compress(UID.JPEG2000Lossless)
    path = save(ds, tmp_path / "j2k.dcm")
    dec = get_decoder(UID.JPEG2000Lossless)
    monkeypatch.setattr(dec, "_available", {})
    monkeypatch.setattr(dec, "_unavailable", {"pylibjpeg": ("pylibjpeg>=2.0", "pylibjpeg-openjpeg>=2.0")})
    status = transfer_syntaxes.status_for(UID.JPEG2000Lossless)
    assert not status.available and "pylibjpeg-openjpeg" in status.install
    with pytest.raises(CodecUnavailableError) as err:
        decode_dicom(path)
    assert_clear(err, "JPEG 2000 Lossless (1.2.840.10008.1.2.4.90)")
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in str(err.value)


def test_unsupported_transfer_syntax(tmp_path):
    ds = make_ds(phantom(12), 12)
    ds.compress(UID.JPEG2000Lossless)
    ds.file_meta.TransferSyntaxUID = UID.MPEG2MPML
    with pytest.raises(CodecUnavailableError) as err:
        decode_dicom(save(ds, tmp_path / "mpeg.dcm"))
    assert_clear(err, "1.2.840.10008.1.2.4.100")
    ds.file_meta.TransferSyntaxUID = "1.2.3.999<script>"
    evil = tmp_path / "evil.dcm"
    ds.save_as(evil, enforce_file_format=True, implicit_vr=False, little_endian=True)
    with pytest.raises(CodecUnavailableError) as err:
        decode_dicom(evil)
    assert "<script>" not in str(err.value)


def test_codec_status_table():
    table = transfer_syntaxes.codec_status()
    uids = {s.uid for s in table}
    expected = {
        UID.ImplicitVRLittleEndian, UID.ExplicitVRLittleEndian, UID.ExplicitVRBigEndian,
        UID.DeflatedExplicitVRLittleEndian, UID.JPEGBaseline8Bit, UID.JPEGExtended12Bit,
        UID.JPEGLossless, UID.JPEGLosslessSV1, UID.JPEGLSLossless, UID.JPEGLSNearLossless,
        UID.JPEG2000Lossless, UID.JPEG2000, UID.HTJ2KLossless, UID.HTJ2KLosslessRPCL, UID.HTJ2K, UID.RLELossless,
    }  # fmt: skip
    assert uids == expected
    for s in table:
        assert s.name and isinstance(s.available, bool)
        assert s.available, f"{s.name}: {s.install} ({s.missing})"  # the test environment has them all
        assert s.install is None
    assert transfer_syntaxes.unavailable_message(UID.ExplicitVRLittleEndian) is None


# -------------------------------------------------------------------------------- metadata


def test_metadata_and_patient_fields(tmp_path):
    ds = make_ds(phantom(12), 12, ImageType=["ORIGINAL", "PRIMARY"], PresentationIntentType="FOR PRESENTATION",
                 Laterality="R", ImagerPixelSpacing=[0.139, "0.14"], PixelSpacing=[0.2, 0.2], PatientAge="071Y")
    rad = decode_dicom(save(ds, tmp_path / "m.dcm"))
    assert set(METADATA_KEYS) <= set(rad.metadata) and set(PATIENT_KEYS) <= set(rad.patient)
    assert rad.metadata == {
        "sop_instance_uid": "1.2.826.0.1.3680043.10.1234.1",
        "study_instance_uid": "1.2.826.0.1.3680043.10.1234.2",
        "series_instance_uid": "1.2.826.0.1.3680043.10.1234.3",
        "patient_orientation": "L\\F",
        "image_laterality": "B",
        "modality": "DX",
        "body_part": "PELVIS",
        "view_position": "AP",
        "photometric_interpretation": "MONOCHROME2",
        "transfer_syntax": UID.ExplicitVRLittleEndian,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.1.1",
        "image_type": "ORIGINAL\\PRIMARY",
        "presentation_intent_type": "FOR PRESENTATION",
        "number_of_frames": 1,
        "laterality": "R",
        "pixel_spacing_mm": [0.139, 0.14],  # the detector's spacing, not Pixel Spacing
        "samples_per_pixel": 1,
    }
    assert rad.patient == {
        "patient_name": "Doe^Jane",
        "patient_id": "P123",
        "patient_birth_date": "19400101",
        "study_date": "20240102",
        "accession_number": "ACC9",
        "patient_age": "071Y",
    }
    assert all(type(v) is str for v in rad.patient.values())
    assert rad.colour is None  # a grey source
    assert rad.warnings == []


def test_pixel_spacing_falls_back_and_refuses_nonsense(tmp_path):
    ds = make_ds(phantom(12), 12, PixelSpacing=[0.2, 0.25])
    assert decode_dicom(save(ds, tmp_path / "a.dcm")).metadata["pixel_spacing_mm"] == [0.2, 0.25]
    ds = make_ds(phantom(12), 12, ImagerPixelSpacing=[0, 0.1])
    assert decode_dicom(save(ds, tmp_path / "b.dcm")).metadata["pixel_spacing_mm"] is None


def test_sop_class_from_the_file_meta_when_the_data_set_lacks_it(tmp_path):
    ds = make_ds(phantom(12), 12)
    del ds.SOPClassUID
    assert decode_dicom(save(ds, tmp_path / "m.dcm")).metadata["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.1.1"


def test_missing_metadata_is_none(tmp_path):
    ds = make_ds(phantom(12), 12)
    for keyword in ("PatientOrientation", "ImageLaterality", "BodyPartExamined", "ViewPosition"):
        delattr(ds, keyword)
    del ds.PatientName, ds.AccessionNumber
    rad = decode_dicom(save(ds, tmp_path / "m.dcm"))
    for key in ("patient_orientation", "image_laterality", "body_part", "view_position", "image_type",
                "presentation_intent_type", "laterality", "pixel_spacing_mm"):
        assert rad.metadata[key] is None
    assert rad.patient["patient_name"] is None and rad.patient["accession_number"] is None
    assert rad.warnings == []


@pytest.mark.parametrize(
    "body_part,view,refused",
    [
        ("CHEST", "AP", ["body_part"]),
        ("PELVIS", "LL", ["view"]),
        ("HIP", "PA", []),
        ("Pelvis AP", "AP", []),
        ("SKULL", "LATERAL", ["body_part", "view"]),
    ],
)
def test_body_part_and_view_are_read_and_judged(tmp_path, body_part, view, refused):
    """The decoder reads them as they are; the eligibility check refuses what is not a pelvis / hip
    or not an AP / PA view (the decoder itself no longer warns)."""
    from hipcad.runtime.inference.eligibility import assess
    from hipcad.runtime.model.bundle import load_bundle

    ds = make_ds(phantom(12), 12, BodyPartExamined=body_part, ViewPosition=view)
    rad = decode_dicom(save(ds, tmp_path / "b.dcm"))
    assert rad.metadata["body_part"] == body_part and rad.metadata["view_position"] == view
    checks = assess(rad, load_bundle().intended_use, None).checks
    assert [name for name in ("body_part", "view") if not checks[name]["passed"]] == refused


HOSTILE_NAME = "<script>alert('x')</script>^Evil"
HOSTILE_UID = "../../etc/passwd"


def test_hostile_strings_stored_verbatim_never_logged(tmp_path, caplog):
    ds = make_ds(
        phantom(12),
        12,
        PatientName=HOSTILE_NAME,
        SOPInstanceUID=HOSTILE_UID,
        StudyInstanceUID="1.2<img src=x onerror=alert(1)>",
        PatientID="../../../root",
        BodyPartExamined="<b>CHEST</b>",
    )
    path = save(ds, tmp_path / "evil.dcm")
    caplog.set_level(logging.DEBUG)
    caplog.clear()  # pydicom complained while the test wrote the file
    with _no_warnings():
        rad = decode_dicom(path)
    assert rad.patient["patient_name"] == HOSTILE_NAME
    assert rad.metadata["sop_instance_uid"] == HOSTILE_UID
    assert rad.metadata["study_instance_uid"] == "1.2<img src=x onerror=alert(1)>"
    assert rad.patient["patient_id"] == "../../../root"
    assert rad.metadata["body_part"] == "<b>CHEST</b>"
    # The eligibility check's reason does not quote a value that is not a well-formed code string.
    from hipcad.runtime.inference.eligibility import assess
    from hipcad.runtime.model.bundle import load_bundle

    reasons = assess(rad, load_bundle().intended_use, None).reasons
    assert "Body Part Examined is an unexpected value, not a pelvis or hip" in reasons
    assert any(r.name == "hipcad.runtime.imaging.dicom" for r in caplog.records)  # the capture works
    for record in caplog.records:
        text = record.getMessage()
        for secret in ("<script>", "../../", "onerror", "<b>", "Evil"):
            assert secret not in text, (record.name, text)
    # Errors do not quote file contents either: a hostile Number of Frames, Rescale Slope, size.
    plain = make_ds(phantom(12), 12, NumberOfFrames="11111111", RescaleSlope="22222222", RescaleIntercept=0)
    data = read_bytes(save(plain, tmp_path / "n.dcm"))
    bad_frames = data.replace(b"11111111", b"<script>")
    bad_slope = data.replace(b"11111111", b"1       ").replace(b"22222222", b"<script>")
    ds.Rows = 60000
    too_large = read_bytes(save(ds, tmp_path / "evil2.dcm"))
    caplog.clear()
    for bad, error in ((bad_frames, BadInputError), (bad_slope, BadInputError), (too_large, InputTooLargeError)):
        with pytest.raises(error) as err:
            decode_dicom(bad)
        assert "script" not in str(err.value) and "../" not in str(err.value), str(err.value)
    for record in caplog.records:
        assert "<script>" not in record.getMessage() and "../../" not in record.getMessage()


class _no_warnings:
    """Python warnings raised by decode_dicom would reach stderr (and the journal): none allowed."""

    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        self.caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        texts = [str(w.message) for w in self.caught]
        assert not any("script" in t or "../" in t for t in texts), texts
        return False


def test_bytes_and_path_sources_agree(tmp_path):
    path = save(make_ds(phantom(12), 12, WindowCenter=2000, WindowWidth=1500), tmp_path / "x.dcm")
    data = read_bytes(path)
    a, b, c = decode_dicom(path), decode_dicom(data), decode_dicom(bytearray(data))
    assert np.array_equal(a.pixels, b.pixels) and np.array_equal(a.pixels, c.pixels)
    assert a.metadata == b.metadata and a.patient == b.patient


def test_deflate_stream_corrupt(tmp_path):
    path = save(make_ds(phantom(12), 12), tmp_path / "x.dcm")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = UID.DeflatedExplicitVRLittleEndian
    good = read_bytes(save(ds, tmp_path / "d.dcm"))
    meta = pydicom.filereader.read_file_meta_info(tmp_path / "d.dcm")
    meta_end = 132 + 12 + meta.FileMetaInformationGroupLength  # preamble, DICM, (0002,0000), group
    bad = good[:meta_end] + bytes(reversed(good[meta_end:]))  # not a deflate stream any more
    with pytest.raises(BadInputError) as err:
        decode_dicom(bad)
    assert "\n" not in str(err.value)


def test_concurrent_decodes_agree(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    paths = [
        save(make_ds(phantom(12, seed=i), 12, WindowCenter=2000, WindowWidth=1500), tmp_path / f"{i}.dcm")
        for i in range(4)
    ]
    serial = [decode_dicom(p).pixels for p in paths]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda p: decode_dicom(p).pixels, paths * 3))
    for i, pixels in enumerate(parallel):
        assert np.array_equal(pixels, serial[i % 4])


@pytest.mark.parametrize("bits,signed", [(12, False), (16, True)])
def test_bin_stored_is_the_rounded_block_mean(bits, signed):
    from hipcad.runtime.imaging.dicom import bin_stored

    arr = phantom(bits, signed)
    for k in (2, 3):
        r, c = (ROWS // k) * k, (COLS // k) * k
        expected = np.floor(arr[:r, :c].astype(np.float64).reshape(r // k, k, c // k, k).mean(axis=(1, 3)) + 0.5)
        binned = bin_stored(arr, k)
        assert binned.dtype == arr.dtype and np.array_equal(binned, expected.astype(arr.dtype))


def test_min_side_bins_large_dicoms_and_keeps_the_stored_geometry(tmp_path):
    arr = phantom(12)
    path = save(make_ds(arr, 12, WindowCenter=2048, WindowWidth=4400), tmp_path / "big.dcm")  # nothing clipped
    full = decode_dicom(path)
    half = decode_dicom(path, min_side=ROWS // 2)  # 200 x 256 -> binned by 2
    assert full.pixels.shape == (ROWS, COLS) and full.scale == 1.0
    assert half.pixels.shape == (ROWS // 2, COLS // 2) and half.original_shape == (ROWS, COLS) and half.scale == 0.5
    # where the display chain is linear (no clipping), binning before it equals binning after it,
    # within rounding
    means = full.pixels.astype(float).reshape(ROWS // 2, 2, COLS // 2, 2).mean(axis=(1, 3))
    assert np.abs(half.pixels - means).max() <= 1.0
    assert decode_dicom(path, min_side=ROWS // 2 + 1).pixels.shape == (ROWS, COLS)  # would drop below min_side


def test_j2k_reduced_decoding_with_odd_sizes(tmp_path):
    """201 x 257: Pillow would size a 1/4 decode 50 x 64 where OpenJPEG gives 51 x 65, so the
    decoder takes 1/2 from the wavelet levels and bins the rest."""
    arr = np.pad(phantom(12), ((0, 1), (0, 1)), mode="edge")
    ds = make_ds(arr, 12)
    ds.compress(UID.JPEG2000Lossless)
    path = save(ds, tmp_path / "odd.dcm")
    assert read_dicom_pixels(path, min_side=50).stored.shape == (101, 129)
    small = decode_dicom(path, min_side=50)
    assert small.pixels.shape == (50, 64) and small.original_shape == (201, 257)
    full = decode_dicom(path).pixels[:200, :256].astype(float).reshape(50, 4, 64, 4).mean(axis=(1, 3))
    assert np.corrcoef(small.pixels.ravel(), full.ravel())[0, 1] > 0.99
