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
from hipcad.runtime.imaging import transfer_syntaxes
from hipcad.runtime.imaging.deflate import guard_deflate
from hipcad.runtime.imaging.dicom_display import GRAY
from hipcad.runtime.imaging.frame_check import check_frame_header
from hipcad.runtime.imaging.jpeg2000 import decode_j2k_reduced
from hipcad.runtime.imaging.limits import DEFAULT_LIMITS, DecodeLimits
from hipcad.runtime.imaging.quiet import safe_reason

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


def _guard_deflate(fp: BinaryIO, limits: DecodeLimits) -> None:
    """Refuse a Deflated dataset that inflates beyond the file-size limit (zip bomb), is corrupt or
    does not end, before pydicom inflates it in one call (:mod:`.deflate`)."""
    guard_deflate(fp, limits)


def _read_dataset(fp: BinaryIO, warns: list[str]):
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread(fp, defer_size=_DEFER_SIZE, force=False)
    except InvalidDicomError as err:
        first_error = err
    except Exception as err:
        raise BadInputError(f"cannot parse the DICOM header: {safe_reason(err)}") from err
    # No 128-byte preamble / "DICM": accept only what parses to an image.
    try:
        fp.seek(0)
        ds = dcmread(fp, defer_size=_DEFER_SIZE, force=True)
        is_image = "PixelData" in ds and "Rows" in ds and "Columns" in ds
    except Exception:
        is_image = False
    if not is_image:
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

    def __init__(self, ds, warns: list[str]) -> None:
        if "PixelData" not in ds:
            if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
                raise BadInputError("DICOM has float pixel data, which hipcad does not read")
            raise BadInputError("DICOM has no pixel data")
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
    with _open_source(source, limits) as fp:
        _guard_deflate(fp, limits)
        ds = _read_dataset(fp, warns)
        try:
            ts = _transfer_syntax(ds)
        except Exception as err:
            raise BadInputError(f"invalid DICOM file meta information: {safe_reason(err)}") from err
        header = ImageHeader(ds, warns)
        limits.check_dimensions(header.rows, header.cols, header.frames, header.samples)
        message = transfer_syntaxes.unavailable_message(ts)
        if message:
            raise CodecUnavailableError(message)
        codec = transfer_syntaxes.SUPPORTED[str(ts)]
        check_frame_header(ds, ts, header)  # before any codec sees the frame (frame_check)
        factor = min(header.rows, header.cols) // min_side if min_side else 0
        reduced = decode_j2k_reduced(ds, ts, header, factor.bit_length() - 1) if factor >= 2 else None
        stored, props = reduced if reduced is not None else _decode_first_frame(ds, ts, codec, header)
    if header.frames > 1:
        warns.append(f"multi-frame DICOM ({header.frames} frames): only the first frame is used")
    return DicomPixels(ds, stored, props, header, ts, warns)




def _decode_first_frame(ds, ts, codec, header: ImageHeader):
    from pydicom.pixels import get_decoder
    from pydicom.pixels.utils import get_expected_length

    try:
        data = ds.PixelData  # reads deferred pixel data now
    except Exception as err:
        raise BadInputError(f"cannot read the pixel data: {safe_reason(err)}") from err
    if data is None or len(data) == 0:
        raise BadInputError("DICOM has no pixel data (the Pixel Data element is empty)")
    if not ts.is_encapsulated:
        expected = get_expected_length(ds, "bytes")
        if len(data) < expected:
            raise BadInputError(f"pixel data truncated: expected {expected} bytes, found {len(data)}")
    try:
        arr, props = get_decoder(ts).as_array(ds, index=0)
    except MemoryError as err:
        raise InputTooLargeError("not enough memory to decode the pixel data") from err
    except Exception as err:
        raise BadInputError(f"cannot decode {codec.name} pixel data: {safe_reason(err)}") from err
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


