"""Real-world DICOM: files without preamble, 12-bit lossy JPEG with the WG04 scan-header quirk,
HTJ2K, multi-frame limits, non-image objects and DICOMDIRs, truncated files, messages that keep
their cause but never a patient's values, missing image elements, tiny images."""

from __future__ import annotations

import copy
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom import uid as UID  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.encaps import encapsulate, generate_frames  # noqa: E402
from pydicom.filebase import DicomBytesIO  # noqa: E402
from pydicom.filewriter import write_dataset, write_file_meta_info  # noqa: E402

from hipcad.runtime.errors import BadInputError  # noqa: E402
from hipcad.runtime.imaging import quiet  # noqa: E402
from hipcad.runtime.imaging.decode import decode  # noqa: E402
from hipcad.runtime.imaging.decoders import SOS_QUIRK_WARNING, fix_sequential_sos  # noqa: E402
from hipcad.runtime.imaging.dicom import decode_dicom, read_dicom_pixels  # noqa: E402
from hipcad.runtime.imaging.limits import DecodeLimits  # noqa: E402
from hipcad.runtime.imaging.sniff import HEAD_BYTES, sniff  # noqa: E402
from tests.helpers import dicom_dataset  # noqa: E402

# writing the test files makes pydicom warn (decode_dicom itself is quiet)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROWS, COLS = 300, 400
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def image(bits: int = 12) -> np.ndarray:
    yy, xx = np.mgrid[0:ROWS, 0:COLS]
    top = (1 << bits) - 1
    img = top * (0.1 + 0.5 * xx / COLS) + 40 * np.sin(yy / 7.0)
    img[(yy - 150) ** 2 + (xx - 250) ** 2 < 60**2] = top * 0.95
    return np.clip(np.rint(img), 0, top).astype(np.uint16 if bits > 8 else np.uint8)


def make_ds(arr: np.ndarray, bits: int = 12, sop: str = "1.2.840.10008.5.1.4.1.1.1.1") -> Dataset:
    return dicom_dataset(arr, bits, sop, SpecificCharacterSet="ISO_IR 100", StudyDate="19991231",
                         PatientName="Secret^Patient", PatientID="ID-SECRET-42", BodyPartExamined="PELVIS",
                         PatientOrientation=["L", "F"])


def save(ds: Dataset, path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def headerless(ds: Dataset, implicit: bool, little: bool = True, with_meta: bool = False) -> bytes:
    """The data set as old CR exports write it: no 128-byte preamble, no 'DICM' (and no file meta)."""
    fp = DicomBytesIO()
    if with_meta:
        write_file_meta_info(fp, ds.file_meta, enforce_standard=True)
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    body = copy.deepcopy(ds)
    body.file_meta = FileMetaDataset()
    if not little:
        body.PixelData = np.frombuffer(body.PixelData, "<u2").byteswap().tobytes()
    write_dataset(fp, body)
    return fp.getvalue()


def tool(*args) -> None:
    if shutil.which(args[0]) is None:
        pytest.skip(f"{args[0]} is not installed")
    subprocess.run([str(a) for a in args], check=True, capture_output=True, timeout=60)


def message(source) -> str:
    with pytest.raises(BadInputError) as err:
        decode_dicom(source)
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# ----------------------------------------------------------------------------- no preamble


@pytest.mark.parametrize("implicit,little,with_meta", [(True, True, False), (False, True, False), (False, False, False),
                                                       (True, True, True)],
                         ids=["implicit-le", "explicit-le", "explicit-be", "implicit-with-meta"])
def test_headerless_dicom_is_sniffed_and_read(tmp_path, implicit, little, with_meta):
    arr = image()
    ds = make_ds(arr)
    if with_meta:
        ds.file_meta.TransferSyntaxUID = UID.ImplicitVRLittleEndian
    data = headerless(ds, implicit, little, with_meta)
    assert sniff(data[:HEAD_BYTES]) == "dicom"
    assert sniff(data[:132]) == "dicom"  # callers that still pass 132 bytes
    path = tmp_path / "raw"
    path.write_bytes(data)
    assert np.array_equal(read_dicom_pixels(path).stored, arr)
    rad = decode(path)
    assert any("preamble" in w for w in rad.warnings)


def test_headerless_non_image_is_named(tmp_path):
    ds = make_ds(image(), sop="1.2.840.10008.5.1.4.1.1.481.3")  # RT Structure Set
    del ds.PixelData
    path = tmp_path / "rtss"
    path.write_bytes(headerless(ds, implicit=True))
    assert "RT Structure Set" in message(path)


@pytest.mark.parametrize("content", [b"id,label\n1,0\n" * 20, b"PK\x03\x04" + bytes(200), b"\x1f\x8b\x08" + bytes(200),
                                     bytes(range(256)) * 4, b"\x08\x00\x05\x00" + b"\xff" * 300, b"%PDF-1.4\n" * 30],
                         ids=["csv", "zip", "gzip", "bytes", "bad-group-8", "pdf"])
def test_sniff_refuses_what_is_not_dicom(content):
    assert sniff(content[:HEAD_BYTES]) is None


@pytest.mark.parametrize("content,words", [(b"\x1f\x8b\x08" + bytes(200), "gzip"), (b"PK\x03\x04" + bytes(200), "ZIP"),
                                           (b"%PDF-1.4\n" * 30, "PDF"), (b"id,label\n" * 30, "unrecognised")])
def test_what_is_not_an_image_is_named(tmp_path, content, words):
    path = tmp_path / "file"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=words):
        decode(path)


# ------------------------------------------------------------------------- 12-bit lossy JPEG


def test_wg04_jply_scan_header_quirk_is_decoded_like_the_fixed_file():
    """pydicom's JPEG-lossy.dcm is WG04 NM1_JPLY (Se=0 in a sequential scan); JPGExtended.dcm is
    the same stream with that byte fixed."""
    bad, good = read_dicom_pixels(TEST_FILES / "JPEG-lossy.dcm"), read_dicom_pixels(TEST_FILES / "JPGExtended.dcm")
    assert np.array_equal(bad.stored, good.stored)
    assert SOS_QUIRK_WARNING in bad.warnings and SOS_QUIRK_WARNING not in good.warnings


def test_jpeg_extended_12bit_from_dcmcjpeg_with_se0(tmp_path):
    src = save(make_ds(image()), tmp_path / "src.dcm")
    tool("dcmcjpeg", "+ee", src, tmp_path / "e.dcm")
    ds = pydicom.dcmread(tmp_path / "e.dcm")
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    reference = read_dicom_pixels(tmp_path / "e.dcm").stored
    sos = frame.find(b"\xff\xda")
    at = sos + 5 + 2 * frame[sos + 4] + 1  # Se
    broken = frame[:at] + b"\x00" + frame[at + 1 :]
    assert fix_sequential_sos(broken) == frame
    assert fix_sequential_sos(frame) is None  # a correct stream is left alone
    ds.PixelData = encapsulate([broken])
    decoded = read_dicom_pixels(save(ds, tmp_path / "b.dcm"))
    assert np.array_equal(decoded.stored, reference) and SOS_QUIRK_WARNING in decoded.warnings


# ---------------------------------------------------------------------------------- HTJ2K


@pytest.mark.parametrize("ts", [UID.HTJ2KLossless, UID.HTJ2KLosslessRPCL, UID.HTJ2K])
def test_htj2k_is_read_full_and_reduced(tmp_path, ts):
    imagecodecs = pytest.importorskip("imagecodecs")
    arr = image()
    ds = make_ds(arr)
    ds.file_meta.TransferSyntaxUID = ts
    ds.PixelData = encapsulate([imagecodecs.htj2k_encode(arr)])  # reversible: lossless
    path = save(ds, tmp_path / "ht.dcm")
    assert np.array_equal(read_dicom_pixels(path).stored, arr)
    reduced = read_dicom_pixels(path, min_side=ROWS // 2).stored  # wavelet levels, as for JPEG 2000
    assert reduced.shape == (ROWS // 2, COLS // 2)
    assert decode(path).metadata["transfer_syntax"] == ts


# ------------------------------------------------------------------------------ multi-frame


def test_multiframe_j2k_first_frame_reduced_and_limits_per_frame(tmp_path):
    arr = image()
    frames = [arr, np.zeros_like(arr), arr // 2]
    ds = make_ds(arr)
    ds.NumberOfFrames = 3
    ds.PixelData = np.concatenate(frames).tobytes()
    ds.compress(UID.JPEG2000Lossless, np.stack(frames))
    path = save(ds, tmp_path / "mf.dcm")
    limits = DecodeLimits(max_pixels=2 * ROWS * COLS)
    assert np.array_equal(read_dicom_pixels(path, limits).stored, arr)
    assert read_dicom_pixels(path, limits, min_side=ROWS // 2).stored.shape == (ROWS // 2, COLS // 2)
    rad = decode_dicom(path, limits)
    assert any(f"3 frames of {COLS} x {ROWS}" in w and "first frame" in w for w in rad.warnings)


def test_native_multiframe_truncated_after_the_first_frame(tmp_path):
    arr = image()
    ds = make_ds(arr)
    ds.NumberOfFrames = 3
    ds.PixelData = arr.tobytes() * 2 + arr.tobytes()[:100]
    decoded = read_dicom_pixels(save(ds, tmp_path / "mf.dcm"))
    assert np.array_equal(decoded.stored, arr)
    assert any("truncated after its first frame" in w for w in decoded.warnings)


# ------------------------------------------------------------------------ non-image objects

NON_IMAGE_ELEMENTS = ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                      "SamplesPerPixel", "PhotometricInterpretation")


@pytest.mark.parametrize("sop,words", [
    ("1.2.840.10008.5.1.4.1.1.88.59", "Key Object Selection"),
    ("1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive SR"),
    ("1.2.840.10008.5.1.4.1.1.104.1", "Encapsulated PDF"),
    ("1.2.840.10008.5.1.4.1.1.11.1", "Presentation State"),
    ("1.2.840.10008.5.1.4.1.1.481.5", "RT Plan"),
    ("1.2.840.10008.5.1.4.1.1.9.1.1", "ECG"),
])
def test_non_image_objects_say_what_they_are(tmp_path, sop, words):
    ds = make_ds(image(), sop=sop)
    for keyword in NON_IMAGE_ELEMENTS:
        delattr(ds, keyword)
    text = message(save(ds, tmp_path / "obj.dcm"))
    assert text.startswith("not an image") and words in text


def test_image_object_without_pixels(tmp_path):
    ds = make_ds(image(), sop="1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
    for keyword in NON_IMAGE_ELEMENTS:
        delattr(ds, keyword)
    assert message(save(ds, tmp_path / "ct.dcm")) == "the file is a CT Image object without pixel data: there is no image to read"


@pytest.mark.parametrize("name,words", [
    ("rtplan.dcm", "not an image: the file is an RT Plan"),
    ("reportsi.dcm", "not an image: the file is a Basic Text SR"),
    ("waveform_ecg.dcm", "ECG"),
    ("rtstruct.dcm", "RT Structure Set"),  # no preamble, implicit VR
    ("ExplVR_BigEndNoMeta.dcm", "RT Ion Plan"),  # no preamble, explicit VR big endian
    ("dicomdirtests/DICOMDIR", "this is a DICOMDIR"),
])
def test_pydicoms_non_image_files_are_named(name, words):
    path = TEST_FILES / name
    if not path.exists():
        pytest.skip(f"this pydicom does not ship {name}")
    with pytest.raises(BadInputError, match=words):
        decode(path)


def test_dicomdir_points_at_the_images(tmp_path):
    folder = tmp_path / "disc"
    (folder / "IMAGES").mkdir(parents=True)
    save(make_ds(image()), folder / "IMAGES" / "IM1")
    if shutil.which("dcmmkdir") is None:
        pytest.skip("dcmmkdir is not installed")
    subprocess.run(["dcmmkdir", "--recurse", "+I", "IMAGES"], cwd=folder, check=True, capture_output=True)
    text = message(folder / "DICOMDIR")
    assert "DICOMDIR" in text and "1 image)" in text and "folder" in text


# ------------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("where,words", [
    ("mid-pixels", "pixel data truncated: expected"),
    ("after-length", "pixel data truncated: the Pixel Data declares"),
    ("in-tag", "pixel data truncated: the file ends inside"),
    ("before-pixels", "truncated?"),
])
def test_truncated_native(tmp_path, where, words):
    data = save(make_ds(image()), tmp_path / "x.dcm").read_bytes()
    at = data.rfind(b"\xe0\x7f\x10\x00")
    cut = {"mid-pixels": at + 12 + 5000, "after-length": at + 12, "in-tag": at + 6, "before-pixels": at}[where]
    assert words in message(data[:cut])


@pytest.mark.parametrize("ts", [UID.RLELossless, UID.JPEG2000Lossless])
def test_truncated_encapsulated(tmp_path, ts):
    arr = image()
    ds = make_ds(arr)
    ds.compress(ts, arr)
    data = save(ds, tmp_path / "c.dcm").read_bytes()
    assert "pixel data truncated: the compressed pixel data stops" in message(data[: len(data) - 3000])


# --------------------------------------------------------------------------------- messages


def test_reason_keeps_library_words_and_blanks_patient_values():
    try:
        quiet.set_patient_values(make_ds(image()))
        err = AttributeError("'FileDataset' object has no attribute 'SamplesPerPixel'")
        assert quiet.safe_reason(err) == "'FileDataset' object has no attribute 'SamplesPerPixel'"
        err = ValueError("Invalid value for VR PN: 'Secret^Patient' (ID-SECRET-42, 19991231) in 'JPEG Extended'")
        text = quiet.safe_reason(err)
        assert "Secret" not in text and "ID-SECRET-42" not in text and "19991231" not in text
        assert "'JPEG Extended'" in text and "VR PN" in text
    finally:
        quiet.set_patient_values(None)
    # before the header is known only what a library writes itself is kept
    text = quiet.safe_reason(ValueError("Missing required element: (0028,0101) 'Bits Stored' near 'Smith' in 'FileDataset'"))
    assert "'Bits Stored'" in text and "'FileDataset'" in text and "Smith" not in text


def test_patient_values_are_not_kept_after_a_decode(tmp_path):
    decode_dicom(save(make_ds(image()), tmp_path / "x.dcm"))
    assert getattr(quiet._state, "phi", None) is None


@pytest.mark.parametrize("keyword,words", [("SamplesPerPixel", "no Samples per Pixel; 1 assumed"),
                                           ("PixelRepresentation", "no Pixel Representation; 0 assumed"),
                                           ("BitsStored", "no Bits Stored; 16 assumed")])
def test_missing_type1_image_elements_get_their_defaults(tmp_path, keyword, words):
    arr = image()
    ds = make_ds(arr)
    delattr(ds, keyword)
    decoded = read_dicom_pixels(save(ds, tmp_path / f"{keyword}.dcm"))
    assert np.array_equal(decoded.stored, arr)
    assert any(words in w for w in decoded.warnings)


# ----------------------------------------------------------------------------- tiny images


@pytest.mark.parametrize("shape", [(3, 3), (1, 100), (100, 1), (2, 2000), (1640, 2), (1, 1)])
def test_tiny_images_decode_without_numpy_warnings(tmp_path, shape):
    """The decoder reads any size (the eligibility check refuses small images as an answer)."""
    from PIL import Image

    arr = np.ascontiguousarray(np.resize(image(), shape))
    dcm = save(make_ds(arr), tmp_path / "t.dcm")
    png, jpg = tmp_path / "t.png", tmp_path / "t.jpg"
    Image.fromarray((arr >> 4).astype(np.uint8)).save(png)
    Image.fromarray((arr >> 4).astype(np.uint8)).convert("RGB").save(jpg)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        for path in (dcm, png, jpg):
            for min_side in (None, 256):
                rad = decode(path, min_side=min_side)
                assert rad.original_shape == shape and rad.pixels.shape == shape
