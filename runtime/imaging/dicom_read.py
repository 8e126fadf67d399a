"""Reading a DICOM file up to the stored values of its first frame: size and deflate guards, the
header (with or without the 128-byte preamble), the image-pixel module validated, the transfer
syntax's decoder, truncation checks. No display processing here (see :mod:`.dicom_display`).
"""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

import numpy as np

from hipcad.runtime.errors import BadInputError, CodecUnavailableError, HipcadError, InputTooLargeError
from hipcad.runtime.imaging import decoders, transfer_syntaxes
from hipcad.runtime.imaging.deflate import guard_deflate
from hipcad.runtime.imaging.dicom_display import GRAY
from hipcad.runtime.imaging.dicom_objects import no_pixel_data_message, says_what_it_is, truncation_message
from hipcad.runtime.imaging.frame_check import check_frame_header
from hipcad.runtime.imaging.jpeg2000 import decode_j2k_reduced
from hipcad.runtime.imaging.limits import DEFAULT_LIMITS, DecodeLimits
from hipcad.runtime.imaging.quiet import safe_reason, set_patient_values

# Element values larger than this are read from the file only when used (the pixel data).
_DEFER_SIZE = 256 * 1024


def check_source_type(source) -> None:
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        raise TypeError(f"decode_dicom needs a path or bytes, not {type(source).__name__}")


@contextmanager
def _open_source(source, limits: DecodeLimits) -> Iterator[BinaryIO]:
    check_source_type(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        limits.check_file_size(len(data))
        if not data:
            raise BadInputError("empty file (0 bytes): not a DICOM file")
        yield io.BytesIO(data)
        return
    try:
        fp = open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        raise BadInputError(f"cannot open the file: {err.strerror or type(err).__name__}") from err
    with fp:
        try:
            size = os.fstat(fp.fileno()).st_size
        except OSError as err:
            raise BadInputError(f"cannot read the file: {err.strerror or type(err).__name__}") from err
        limits.check_file_size(size)
        if size == 0:
            raise BadInputError("empty file (0 bytes): not a DICOM file")
        yield fp


def _read_dataset(fp: BinaryIO, warns: list[str]):
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread(fp, defer_size=_DEFER_SIZE, force=False)
    except InvalidDicomError as err:
        first_error = err
    except Exception as err:
        raise BadInputError(f"cannot parse the DICOM header: {safe_reason(err)}") from err
    # No 128-byte preamble / "DICM": accept only what parses to an image, or to an object that
    # says what it is (then the caller says so).
    try:
        fp.seek(0)
        ds = dcmread(fp, defer_size=_DEFER_SIZE, force=True)
        is_dicom = says_what_it_is(ds)
    except Exception:
        is_dicom = False
    if not is_dicom:
        raise BadInputError("not a DICOM file") from first_error
    warns.append("the file lacks the DICOM preamble and 'DICM' prefix; it was read anyway")
    return ds


def _transfer_syntax(ds):
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    file_meta = getattr(ds, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if ts:
        return UID(str(ts))
    # A dataset without file meta (read with force=True): go by the encoding pydicom found.
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if implicit is None or implicit:
        ts = ImplicitVRLittleEndian
    else:
        ts = ExplicitVRLittleEndian if little in (None, True) else ExplicitVRBigEndian
    ds.file_meta.TransferSyntaxUID = ts
    return ts


def _int(ds, keyword: str, default: int | None = None) -> int:
    try:
        value = ds.get(keyword, None)
        if value is None or value == "":
            if default is None:
                raise BadInputError(f"DICOM image header lacks {keyword}")
            return default
        if not isinstance(value, (int, float, str)) and len(value):  # multi-valued: take the first
            value = value[0]
        return int(value)
    except HipcadError:
        raise
    except Exception as err:
        raise BadInputError(f"invalid DICOM image header: {keyword} is not an integer") from err


class ImageHeader:
    """The image-pixel values that drive decoding, validated."""

    def __init__(self, ds, warns: list[str], fp: BinaryIO | None = None) -> None:
        if "PixelData" not in ds:
            if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
                raise BadInputError("DICOM has float pixel data, which hipcad does not read")
            raise BadInputError(no_pixel_data_message(ds, fp))
        try:
            self.rows = _int(ds, "Rows")
            self.cols = _int(ds, "Columns")
            self.samples = _int(ds, "SamplesPerPixel", 1)
            self.frames = max(_int(ds, "NumberOfFrames", 1), 1)
            self.bits_allocated = _int(ds, "BitsAllocated")
            self.bits_stored = _int(ds, "BitsStored", self.bits_allocated)
            self.signed = _int(ds, "PixelRepresentation", 0)
            pi = ds.get("PhotometricInterpretation", None)
        except HipcadError:
            raise
        except Exception as err:
            raise BadInputError(f"invalid DICOM image header: {safe_reason(err)}") from err
        # Type 1 elements that old exports leave out, read above with their only sane default:
        # written into the data set, because pydicom's decoders need them.
        for keyword, label, value in (
            ("SamplesPerPixel", "Samples per Pixel", self.samples),
            ("PixelRepresentation", "Pixel Representation", self.signed),
            ("BitsStored", "Bits Stored", self.bits_stored),
        ):
            if ds.get(keyword, None) in (None, ""):
                setattr(ds, keyword, value)
                warns.append(f"the file has no {label}; {value} assumed")
        if self.samples not in (1, 3):
            raise BadInputError(f"unsupported Samples per Pixel {self.samples}")
        if self.bits_allocated not in (1, 8, 16, 32):
            raise BadInputError(f"unsupported Bits Allocated {self.bits_allocated}")
        if not 1 <= self.bits_stored <= self.bits_allocated:
            raise BadInputError(f"invalid Bits Stored {self.bits_stored} for Bits Allocated {self.bits_allocated}")
        if self.signed not in (0, 1):
            raise BadInputError(f"invalid Pixel Representation {self.signed}")
        if not pi:
            if self.samples != 1:
                raise BadInputError("DICOM color image lacks Photometric Interpretation")
            ds.PhotometricInterpretation = pi = "MONOCHROME2"
            warns.append("the file has no Photometric Interpretation; MONOCHROME2 assumed")
        self.photometric = str(pi).strip().upper()
        if (self.samples == 1) != (self.photometric in (*GRAY, "PALETTE COLOR")):
            raise BadInputError(
                f"Photometric Interpretation does not match {self.samples} sample(s) per pixel"
            )


@dataclass
class DicomPixels:
    """What :func:`read_dicom_pixels` returns: the first frame's stored values, undisplayed."""

    dataset: Any  # pydicom Dataset (header read, pixel data loaded)
    stored: np.ndarray  # frame 0 as decoded: rows x columns, or rows x columns x 3 (RGB) for color
    properties: dict  # pydicom's pixel properties of ``stored`` (photometric after decoding...)
    header: ImageHeader
    transfer_syntax: str
    warnings: list[str] = field(default_factory=list)


def read_dicom_pixels(source, limits: DecodeLimits = DEFAULT_LIMITS, min_side: int | None = None) -> DicomPixels:
    """Read a DICOM file and decode the stored values of its first frame (no display pipeline).

    With ``min_side``, a JPEG 2000 frame at least twice that size may be decoded at 1/2, 1/4...
    of its size, keeping the shorter side >= ``min_side`` (:func:`decode_j2k_reduced`).

    Raises the errors of :func:`decode_dicom`, except that exceptions from pydicom not
    anticipated here may pass (``decode_dicom`` wraps them), and pydicom's messages are only
    withheld from logs inside ``decode_dicom``.
    """
    check_source_type(source)
    warns: list[str] = []
    set_patient_values(None)  # no header yet: library messages keep only library words
    with _open_source(source, limits) as fp:
        guard_deflate(fp, limits)  # a Deflated dataset that inflates too far or never ends is refused
        ds = _read_dataset(fp, warns)
        set_patient_values(ds)  # from now on exactly the patient's values are blanked
        try:
            ts = _transfer_syntax(ds)
        except Exception as err:
            raise BadInputError(f"invalid DICOM file meta information: {safe_reason(err)}") from err
        header = ImageHeader(ds, warns, fp)
        # Only the first frame is decoded: the size limits apply to one frame (the file as a
        # whole is bounded by max_file_bytes).
        limits.check_dimensions(header.rows, header.cols, 1, header.samples)
        message = transfer_syntaxes.unavailable_message(ts)
        if message:
            raise CodecUnavailableError(message)
        codec = transfer_syntaxes.SUPPORTED[str(ts)]
        check_frame_header(ds, ts, header)  # before any codec sees the frame (frame_check)
        factor = min(header.rows, header.cols) // min_side if min_side else 0
        reduced = decode_j2k_reduced(ds, ts, header, factor.bit_length() - 1) if factor >= 2 else None
        stored, props = reduced if reduced is not None else _decode_first_frame(ds, ts, codec, header, fp, warns)
    if header.frames > 1:
        warns.append(f"multi-frame DICOM ({header.frames} frames of {header.cols} x {header.rows}): "
                     "only the first frame is used")
    return DicomPixels(ds, stored, props, header, ts, warns)


def _decode_first_frame(ds, ts, codec, header: ImageHeader, fp: BinaryIO, warns: list[str]):
    try:
        data = ds.PixelData  # reads deferred pixel data now
    except Exception as err:
        raise BadInputError(f"cannot read the pixel data: {safe_reason(err)}") from err
    if data is None or len(data) == 0:
        raise BadInputError(truncation_message(ds, fp) or "DICOM has no pixel data (the Pixel Data element is empty)")
    if not ts.is_encapsulated:
        from pydicom.pixels.utils import get_expected_length

        try:  # pydicom's count (it knows YBR_FULL_422's 2 bytes per pixel and 1-bit packing)
            frame_bytes = -(-get_expected_length(ds, "bytes") // header.frames)
        except Exception as err:
            raise BadInputError(f"invalid DICOM image header: {safe_reason(err)}") from err
        if len(data) < frame_bytes:
            first = " for the first frame" if header.frames > 1 else ""
            raise BadInputError(f"pixel data truncated: expected {frame_bytes} bytes{first}, found {len(data)}")
        if len(data) < frame_bytes * header.frames and header.bits_allocated > 1:
            # pydicom refuses pixel data shorter than all frames: keep the first, whole frame
            ds.PixelData, ds.NumberOfFrames = bytes(data[:frame_bytes]), 1
            warns.append("the file is truncated after its first frame (only the first frame is used)")
    try:
        arr, props = decoders.decode_frame(ds, ts)
    except MemoryError as err:
        raise InputTooLargeError("not enough memory to decode the pixel data") from err
    except Exception as err:
        fixed = decoders.decode_fixed_jpeg(ds, ts, header.frames)
        if fixed is None:
            raise BadInputError(f"cannot decode {codec.name} pixel data: {safe_reason(err)}") from err
        arr, props = fixed
        warns.append(decoders.SOS_QUIRK_WARNING)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as err:  # a codec's panic: pyo3's PanicException derives from BaseException
        raise BadInputError(f"cannot decode {codec.name} pixel data: the decoder failed "
                            f"({type(err).__name__}: {safe_reason(err)})") from err
    expected_shape = (header.rows, header.cols) if header.samples == 1 else (header.rows, header.cols, 3)
    if arr.shape != expected_shape:
        raise BadInputError(
            f"cannot decode {codec.name} pixel data: decoded shape {arr.shape} does not match the header"
        )
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr, props
