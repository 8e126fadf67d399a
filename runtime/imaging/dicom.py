"""Decode a DICOM radiograph into a display-ready :class:`~hipcad.runtime.imaging.radiograph.Radiograph`.

Order of work, so that nothing large is decoded before it is known to be sane:

1. file size checked (``DecodeLimits.check_file_size``); a Deflated file is inflated once,
   bounded, without keeping the output, to refuse a zip bomb before pydicom inflates it;
2. header parsed by pydicom with large values deferred (pixel data is read only on use);
   a file without the 128-byte preamble / ``DICM`` is re-read with ``force=True`` and kept
   only if it has pixel data;
3. declared size checked (``DecodeLimits.check_dimensions``), the transfer syntax checked
   against :mod:`hipcad.runtime.imaging.transfer_syntaxes`, native pixel data checked for truncation;
4. only the first frame decoded (pydicom's decoder for the transfer syntax);
5. grayscale pipeline of DICOM PS3.4 (Annex N): modality LUT / rescale, then the first VOI
   LUT (preferred) or the first window (LINEAR, LINEAR_EXACT, SIGMOID), then MONOCHROME1
   inversion so that bone is bright; scaled to uint8.

Scaling to 0..255:

* after a VOI LUT, the LUT's output range ``0 .. 2**n - 1`` maps to 0..255, where ``n`` is
  the LUT's declared bits per entry, lowered to the bit length of its largest entry (but
  not under 8) because vendors often declare 16 bits for a 12-bit LUT;
* after a window, the window's declared output range (its values at -inf and +inf, i.e.
  the stored range after rescale, as pydicom's ``apply_windowing`` defines it) maps to 0..255;
* with neither, the 0.5th..99.5th percentiles of the modality values map to 0..255
  (computed exactly from a histogram; robust to burned-in markers and dead pixels),
  falling back to min..max when those coincide.

Speed: for integer pixels of up to 16 bits allocated, the whole pipeline is evaluated once
on a table of every possible stored value (256 or 65536 entries, float64 there), then applied
to the image with one uint8 table lookup: about 15 ms instead of 150-300 ms for 10 megapixels
of float math. Rescale and windowing are pydicom's own ``apply_modality_lut`` and
``apply_windowing``, so the result is identical to running them on the image. Modality and
VOI LUT Sequences are applied here (same semantics as pydicom's ``apply_voi``, whose 3.0
version wraps the indices of an 8-bit LUT with more than 256 entries). The table also masks
bits above Bits Stored (sign-extending signed data), as PS3.5 8.1.1 requires. Other data
(32-bit) go through the same functions on the image itself.

Untrusted values: patient and metadata strings are stored as they are; nothing read from the
file is logged, and while decoding, log records and Python warnings from pydicom and the codec
plugins (which quote element values, e.g. "Invalid value for VR UI: '...'") are dropped.
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
import time
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterator

import numpy as np

from hipcad.runtime.imaging import transfer_syntaxes as codecs
from hipcad.runtime.errors import BadInputError, CodecUnavailableError, HipcadError, InputTooLargeError
from hipcad.runtime.imaging.limits import DEFAULT_LIMITS, DecodeLimits
from hipcad.runtime.imaging.radiograph import Radiograph

__all__ = ["ROBUST_PERCENTILES", "DicomPixels", "decode_dicom", "display_pixels", "read_dicom_pixels"]

log = logging.getLogger(__name__)

# Percentiles mapped to 0 and 255 when the file has neither VOI LUT nor window.
ROBUST_PERCENTILES = (0.5, 99.5)

# Element values larger than this are read from the file only when used (the pixel data).
_DEFER_SIZE = 256 * 1024

_METADATA_FIELDS = {
    "sop_instance_uid": "SOPInstanceUID",
    "study_instance_uid": "StudyInstanceUID",
    "series_instance_uid": "SeriesInstanceUID",
    "patient_orientation": "PatientOrientation",
    "image_laterality": "ImageLaterality",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "view_position": "ViewPosition",
    "photometric_interpretation": "PhotometricInterpretation",
}
_PATIENT_FIELDS = {
    "patient_name": "PatientName",
    "patient_id": "PatientID",
    "patient_birth_date": "PatientBirthDate",
    "study_date": "StudyDate",
    "accession_number": "AccessionNumber",
}

# Body Part Examined values (or fragments of vendor free text) that fit an AP pelvis / hip.
_PELVIS_WORDS = ("PELV", "HIP", "BECKEN", "HUEFTE", "HUFTE", "HANCHE", "BASSIN", "CADERA", "ANCA", "BACINO")
_FRONTAL_VIEWS = ("AP", "PA")

_GRAY = ("MONOCHROME1", "MONOCHROME2")


# --------------------------------------------------------------------------------------
# Keeping pydicom quiet: its messages quote element values (UIDs, names...) from the file.

_state = threading.local()
# Loggers of pydicom and the codec plugins (filters on a logger do not see its children).
_QUIET_LOGGERS = (
    "pydicom",
    "pydicom.pixels.decoders.base",
    "pydicom.pixels.utils",
    "pydicom.pixels.processing",
    "pylibjpeg",
    "pylibjpeg.utils",
    "openjpeg",
    "openjpeg.utils",
    "jpeg_ls",
    "jpeg_ls._CharLS",
    "libjpeg",
    "rle",
    "py.warnings",
)


class _DropWhileDecoding(logging.Filter):
    """Drops records logged by this thread while it is inside :func:`decode_dicom`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_state, "depth", 0):
            _state.dropped = getattr(_state, "dropped", 0) + 1
            return False
        return True


_FILTER = _DropWhileDecoding()
for _name in _QUIET_LOGGERS:
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _DropWhileDecoding) for f in _logger.filters):
        _logger.addFilter(_FILTER)


# Python warnings filters are process-wide (before 3.14): one "ignore" filter is held for as
# long as any thread decodes (reference-counted, so that overlapping decodes in several threads
# cannot leave it installed or remove it early). Other threads' warnings are hidden meanwhile.
_warnings_lock = threading.Lock()
_warnings_users = 0
_warnings_cm: warnings.catch_warnings | None = None


def _warnings_off() -> None:
    global _warnings_users, _warnings_cm
    with _warnings_lock:
        if _warnings_users == 0:
            _warnings_cm = warnings.catch_warnings()
            _warnings_cm.__enter__()
            warnings.simplefilter("ignore")
        _warnings_users += 1


def _warnings_on() -> None:
    global _warnings_users, _warnings_cm
    with _warnings_lock:
        _warnings_users -= 1
        if _warnings_users == 0 and _warnings_cm is not None:
            _warnings_cm.__exit__(None, None, None)
            _warnings_cm = None


@contextmanager
def _quiet() -> Iterator[None]:
    """Withhold pydicom's / the plugins' log records (this thread) and Python warnings."""
    _state.depth = getattr(_state, "depth", 0) + 1
    _warnings_off()
    try:
        with np.errstate(all="ignore"):
            yield
    finally:
        _warnings_on()
        _state.depth -= 1


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"-?[0-9][0-9.]*")
_ALL_PLUGINS_FAILED = "Unable to decode as exceptions were raised by all available plugins"


def _reason(err: BaseException, limit: int = 240) -> str:
    """A one-line description of a library exception, safe to show and to log.

    Never a traceback; quoted text (where libraries quote element values read from the
    file) is replaced by '...' unless it is a number; only printable characters are kept.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(_ALL_PLUGINS_FAILED)]
    text = "; ".join(lines) if lines else type(err).__name__
    text = _QUOTED.sub(lambda m: m.group(0) if _NUMBER.fullmatch(m.group(0)[1:-1]) else "'...'", text)
    text = "".join(ch for ch in text if ch.isprintable())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------
# Reading


def _check_source_type(source) -> None:
    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview)):
        raise TypeError(f"decode_dicom needs a path or bytes, not {type(source).__name__}")


@contextmanager
def _open_source(source, limits: DecodeLimits) -> Iterator[BinaryIO]:
    _check_source_type(source)
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
    """Refuse a Deflated dataset that inflates beyond the file-size limit (zip bomb).

    pydicom inflates the whole dataset in memory in one call; this inflates it first in
    bounded chunks, keeping nothing, and stops as soon as the limit is passed.
    """
    from pydicom.filereader import _read_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    try:
        fp.seek(0)
        head = fp.read(132)
        fp.seek(132 if head[128:132] == b"DICM" else 0)
        meta = _read_file_meta_info(fp)
        deflated = meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
        start = fp.tell()
    except Exception:  # not parseable here: dcmread will say what is wrong
        deflated = False
    if deflated:
        fp.seek(start)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        cap = limits.max_file_bytes
        try:
            while chunk := fp.read(1 << 20):
                while chunk:
                    total += len(inflater.decompress(chunk, 1 << 24))
                    if total > cap:
                        raise InputTooLargeError(
                            f"deflated DICOM inflates to over {cap / 2**20:.0f} MiB, the file-size limit"
                        )
                    chunk = inflater.unconsumed_tail
        except zlib.error as err:
            raise BadInputError(f"corrupt deflated DICOM: {_reason(err)}") from err
    fp.seek(0)


def _read_dataset(fp: BinaryIO, warns: list[str]):
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread(fp, defer_size=_DEFER_SIZE, force=False)
    except InvalidDicomError as err:
        first_error = err
    except Exception as err:
        raise BadInputError(f"cannot parse the DICOM header: {_reason(err)}") from err
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


class _Header:
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
            raise BadInputError(f"invalid DICOM image header: {_reason(err)}") from err
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
        if (self.samples == 1) != (self.photometric in (*_GRAY, "PALETTE COLOR")):
            raise BadInputError(
                f"Photometric Interpretation does not match {self.samples} sample(s) per pixel"
            )


@dataclass
class DicomPixels:
    """What :func:`read_dicom_pixels` returns: the first frame's stored values, undisplayed."""

    dataset: Any  # pydicom Dataset (header read, pixel data loaded)
    stored: np.ndarray  # frame 0 as decoded: rows x columns, or rows x columns x 3 (RGB) for color
    properties: dict  # pydicom's pixel properties of ``stored`` (photometric after decoding...)
    header: _Header
    transfer_syntax: str
    warnings: list[str] = field(default_factory=list)


def read_dicom_pixels(source, limits: DecodeLimits = DEFAULT_LIMITS, min_side: int | None = None) -> DicomPixels:
    """Read a DICOM file and decode the stored values of its first frame (no display pipeline).

    With ``min_side``, a JPEG 2000 frame at least twice that size may be decoded at 1/2, 1/4...
    of its size, keeping the shorter side >= ``min_side`` (:func:`_decode_j2k_reduced`).

    Raises the errors of :func:`decode_dicom`, except that exceptions from pydicom not
    anticipated here may pass (``decode_dicom`` wraps them), and pydicom's messages are only
    withheld from logs inside ``decode_dicom``.
    """
    _check_source_type(source)
    warns: list[str] = []
    with _open_source(source, limits) as fp:
        _guard_deflate(fp, limits)
        ds = _read_dataset(fp, warns)
        try:
            ts = _transfer_syntax(ds)
        except Exception as err:
            raise BadInputError(f"invalid DICOM file meta information: {_reason(err)}") from err
        header = _Header(ds, warns)
        limits.check_dimensions(header.rows, header.cols, header.frames, header.samples)
        message = codecs.unavailable_message(ts)
        if message:
            raise CodecUnavailableError(message)
        codec = codecs.SUPPORTED[str(ts)]
        factor = min(header.rows, header.cols) // min_side if min_side else 0
        reduced = _decode_j2k_reduced(ds, ts, header, factor.bit_length() - 1) if factor >= 2 else None
        stored, props = reduced if reduced is not None else _decode_first_frame(ds, ts, codec, header)
    if header.frames > 1:
        warns.append(f"multi-frame DICOM ({header.frames} frames): only the first frame is used")
    return DicomPixels(ds, stored, props, header, ts, warns)


J2K_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")


def _decode_j2k_reduced(ds, ts, header: _Header, reduce: int):
    """The first frame of an unsigned grayscale JPEG 2000 image at 1/2**reduce of its size, or
    None to take the full decoding path.

    JPEG 2000 stores its image as wavelet levels: Pillow's OpenJPEG decoder can stop before the
    finest ones (``Image.reduce``), which for a 10-megapixel radiograph takes a quarter of the
    time of a full decode and gives the wavelet's own low-pass image. Anything unusual (signed or
    colour data, more than one frame, a codestream Pillow refuses, a size that does not match
    the header) goes the full way, where errors are reported.
    """
    if (str(ts) not in J2K_SYNTAXES or header.photometric not in _GRAY or header.samples != 1 or header.signed
            or header.frames != 1):
        return None
    # Pillow sizes a reduced image as (n + p/2) // p, OpenJPEG decodes ceil(n / p): take a level
    # where they agree (else Pillow reports a broken stream)
    while reduce > 0 and any((n + (1 << reduce >> 1)) >> reduce != -(-n >> reduce) for n in (header.rows, header.cols)):
        reduce -= 1
    if reduce == 0:
        return None
    from PIL import Image
    from pydicom.encaps import generate_frames

    try:  # Pillow's DecompressionBombWarning is silenced by _quiet(); our limits were checked on the header
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        precision = _j2k_precision(frame)
        if precision is None or not (precision == 8 if header.bits_allocated <= 8 else 9 <= precision <= 16):
            return None
        image = Image.open(io.BytesIO(frame), formats=["JPEG2000"])
        if image.size != (header.cols, header.rows) or image.mode not in ("L", "I;16"):
            return None
        image.reduce = reduce
        image.load()
        arr = np.asarray(image)
    except Exception:  # noqa: BLE001 - the full path decodes it or says what is wrong
        return None
    expected = (-(-header.rows // (1 << reduce)), -(-header.cols // (1 << reduce)))
    if arr.shape != expected:
        return None
    if image.mode == "I;16":  # Pillow shifts samples of fewer than 16 bits up to fill 16
        arr = np.right_shift(arr.astype(np.uint16, copy=False), 16 - precision)
    return arr, {"photometric_interpretation": header.photometric}


def _j2k_precision(codestream: bytes) -> int | None:
    """Bit depth of an unsigned single-component J2K codestream (its SIZ marker), else None."""
    # SOC, SIZ marker, Lsiz, Rsiz, Xsiz..YTOsiz (8 x 4 bytes), Csiz, then Ssiz per component
    if len(codestream) < 43 or codestream[:4] != b"\xff\x4f\xff\x51":
        return None
    components = int.from_bytes(codestream[40:42], "big")
    ssiz = codestream[42]
    if components != 1 or ssiz & 0x80:
        return None
    return (ssiz & 0x7F) + 1


def _decode_first_frame(ds, ts, codec, header: _Header):
    from pydicom.pixels import get_decoder
    from pydicom.pixels.utils import get_expected_length

    try:
        data = ds.PixelData  # reads deferred pixel data now
    except Exception as err:
        raise BadInputError(f"cannot read the pixel data: {_reason(err)}") from err
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
        raise BadInputError(f"cannot decode {codec.name} pixel data: {_reason(err)}") from err
    expected_shape = (header.rows, header.cols) if header.samples == 1 else (header.rows, header.cols, 3)
    if arr.shape != expected_shape:
        raise BadInputError(
            f"cannot decode {codec.name} pixel data: decoded shape {arr.shape} does not match the header"
        )
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr, props


# --------------------------------------------------------------------------------------
# Display pipeline


def _stored_domain(nbits: int, bits_stored: int, signed: bool, dtype: np.dtype) -> np.ndarray:
    """For every raw bit pattern of ``nbits`` (index), the stored value it means.

    Bits above Bits Stored are ignored (PS3.5 8.1.1); signed values are sign-extended.
    """
    raw = np.arange(1 << nbits, dtype=np.int64)
    bits = min(bits_stored, nbits)
    values = raw & ((1 << bits) - 1)
    if signed:
        sign = 1 << (bits - 1)
        values = (values ^ sign) - sign
    return values.astype(dtype)


def _lut_item(item, little_endian: bool, signed: bool) -> tuple[np.ndarray, int, int]:
    """(entries, first value mapped, declared bits per entry) of a Modality / VOI LUT item."""
    nr_entries, first_map, bits = (int(v) for v in item.LUTDescriptor)
    nr_entries = nr_entries or 65536
    if signed and first_map >= 1 << 15:  # SS for signed pixel data (PS3.3 C.11.1.1), read as US
        first_map -= 1 << 16
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):  # OW
        if bits <= 8 and len(data) in (nr_entries, nr_entries + 1):  # 8-bit entries packed in bytes
            entries = np.frombuffer(data, dtype=np.uint8)[:nr_entries]
        else:
            entries = np.frombuffer(data[: 2 * nr_entries], dtype="<u2" if little_endian else ">u2")
    else:  # US: one int or a MultiValue
        entries = np.asarray(list(data) if not isinstance(data, int) else [data], dtype=np.int64)[:nr_entries]
    if entries.size < nr_entries:
        raise ValueError("LUT Data is shorter than its LUT Descriptor says")
    if not (bits == 8 or 10 <= bits <= 16):
        raise ValueError("unsupported bits per LUT entry")
    return entries.astype(np.int64), first_map, bits


def _signed(ds) -> bool:
    return int(ds.get("PixelRepresentation", 0) or 0) == 1


def _apply_lut(values: np.ndarray, entries: np.ndarray, first_map: int) -> np.ndarray:
    """PS3.3 C.11.2.1.1: inputs below the first mapped value take the first entry, above the last.

    pydicom's ``apply_voi`` (3.0) holds the indices in the LUT's own dtype, so an 8-bit LUT with
    more than 256 entries wraps them; this does the same mapping with int64 indices.
    """
    if values.dtype.kind == "f":
        index = np.floor(np.nan_to_num(values, nan=first_map)) - first_map
    else:
        index = values.astype(np.int64) - first_map
    np.clip(index, 0, entries.size - 1, out=index)
    return entries[index.astype(np.int64)]


def _modality(values: np.ndarray, ds, little_endian: bool, warns: list[str]) -> np.ndarray:
    """Modality LUT Sequence (hipcad's own, see _apply_lut) or Rescale Slope/Intercept (pydicom's)."""
    from pydicom.pixels.processing import apply_modality_lut

    seq = ds.get("ModalityLUTSequence", None)
    if seq:
        try:
            entries, first_map, _ = _lut_item(seq[0], little_endian, _signed(ds))
            return _apply_lut(values, entries, first_map)
        except Exception:
            warns.append("the Modality LUT is invalid and was ignored")
            return values
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        try:
            ok = all(np.isfinite(float(ds[k].value)) for k in ("RescaleSlope", "RescaleIntercept"))
        except Exception:
            ok = False
        if not ok:
            raise BadInputError("invalid DICOM header: Rescale Slope / Rescale Intercept are not numbers")
    return apply_modality_lut(values, ds)


def _voi(m: np.ndarray, ds, little_endian: bool, warns: list[str]):
    """Apply the first VOI LUT (preferred) or the first window; returns (values, lo, hi) or None."""
    from pydicom.pixels.processing import apply_windowing

    seq = ds.get("VOILUTSequence", None)
    if seq:
        try:
            entries, first_map, declared_bits = _lut_item(seq[0], little_endian, _signed(ds))
            out = _apply_lut(m, entries, first_map)
            top = int(entries.max()) if entries.size else 0
            bits = min(declared_bits, max(8, top.bit_length()))
            return out, 0.0, float((1 << bits) - 1)
        except Exception:
            warns.append("the VOI LUT is invalid and was ignored")
    if ds.get("WindowCenter", None) is not None and ds.get("WindowWidth", None) is not None:
        try:
            out = apply_windowing(m, ds, 0)
            # The window's declared output range: its values for inputs -inf and +inf.
            lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds, 0)
            if np.isfinite(lo) and np.isfinite(hi) and lo != hi:
                return out, float(lo), float(hi)
            raise ValueError("degenerate window output range")
        except Exception:
            warns.append("the window center/width is invalid and was ignored")
    return None


def _robust_range(values: np.ndarray, counts: np.ndarray | None) -> tuple[float, float]:
    """The ROBUST_PERCENTILES of ``values`` (each weighted by ``counts`` when given)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if counts is None:  # the image itself (32-bit data): a partition, not a sort
        values = values[np.isfinite(values)]
        if values.size == 0:
            return 0.0, 0.0
        lo, hi = (float(v) for v in np.percentile(values, ROBUST_PERCENTILES, method="inverted_cdf"))
        return (lo, hi) if hi > lo else (float(values.min()), float(values.max()))
    present = (counts > 0) & np.isfinite(values)
    values, counts = values[present], counts[present]
    if values.size == 0:
        return 0.0, 0.0
    order = np.argsort(values, kind="stable")
    values = values[order]
    cum = np.cumsum(counts[order])
    total = cum[-1]
    p_lo, p_hi = ROBUST_PERCENTILES
    # "inverted CDF" percentile: the smallest value whose cumulative share reaches p.
    i_lo = min(int(np.searchsorted(cum, total * p_lo / 100.0, side="left")), values.size - 1)
    i_hi = min(int(np.searchsorted(cum, total * p_hi / 100.0, side="left")), values.size - 1)
    lo, hi = float(values[i_lo]), float(values[i_hi])
    if hi <= lo:
        lo, hi = float(values[0]), float(values[-1])
    return lo, hi


def _to_uint8(values: np.ndarray, lo: float, hi: float, invert: bool) -> np.ndarray:
    if not hi > lo:
        out = np.zeros(values.shape, dtype=np.uint8)
    else:
        v = np.asarray(values, dtype=np.float64 if values.size <= 65536 else np.float32)
        v = (v - v.dtype.type(lo)) * v.dtype.type(255.0 / (hi - lo))
        np.nan_to_num(v, copy=False, nan=0.0)
        np.clip(v, 0, 255, out=v)
        out = np.rint(v).astype(np.uint8)
    if invert:
        np.subtract(255, out, out=out)
    return out


def _gray_pipeline(values: np.ndarray, ds, little_endian: bool, warns: list[str], counts_fn) -> np.ndarray:
    """Modality -> VOI -> uint8 (-> MONOCHROME1 inversion) on ``values``."""
    m = _modality(values, ds, little_endian, warns)
    voi = _voi(m, ds, little_endian, warns)
    if voi is not None:
        v, lo, hi = voi
    else:
        v = m
        lo, hi = _robust_range(m, counts_fn())
    invert = str(ds.PhotometricInterpretation).strip().upper() == "MONOCHROME1"
    return _to_uint8(v, lo, hi, invert)


def _grayscale(stored: np.ndarray, ds, header: _Header, little_endian: bool, warns: list[str]) -> np.ndarray:
    if stored.dtype.kind in "ui" and stored.dtype.itemsize <= 2:
        nbits = 8 * stored.dtype.itemsize
        index = np.ascontiguousarray(stored).view(np.dtype(f"u{stored.dtype.itemsize}"))
        domain = _stored_domain(nbits, header.bits_stored, bool(header.signed), stored.dtype)
        counts = lambda: np.bincount(index.ravel(), minlength=1 << nbits)  # noqa: E731
        table = _gray_pipeline(domain, ds, little_endian, warns, counts)
        return table[index]
    # Rare (32-bit data): the same functions on the image itself.
    return _gray_pipeline(stored, ds, little_endian, warns, lambda: None)


def _color(stored: np.ndarray, ds, header: _Header, photometric: str, warns: list[str]) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels.processing import apply_color_lut

        rgb = apply_color_lut(stored, ds)
        top = float(np.iinfo(rgb.dtype).max) if rgb.dtype.kind in "ui" else float(rgb.max() or 1)
    else:
        rgb = stored
        top = float((1 << min(header.bits_stored, 8 * stored.dtype.itemsize)) - 1)
    warns.append(f"color DICOM ({photometric}) converted to grayscale")
    if photometric.startswith("YBR"):  # not converted to RGB by the decoder: Y is the luminance
        gray = rgb[..., 0].astype(np.float32)
    else:
        gray = rgb[..., 0].astype(np.float32) * np.float32(0.299)
        gray += rgb[..., 1].astype(np.float32) * np.float32(0.587)
        gray += rgb[..., 2].astype(np.float32) * np.float32(0.114)
    return _to_uint8(gray, 0.0, top, invert=False)


def display_pixels(decoded: DicomPixels) -> tuple[np.ndarray, list[str]]:
    """The display pipeline on decoded stored values: returns (2-D uint8 with bone bright, warnings)."""
    from pydicom.uid import UID

    warns: list[str] = []
    ds, stored, header = decoded.dataset, decoded.stored, decoded.header
    photometric = str(decoded.properties.get("photometric_interpretation", header.photometric)).strip().upper()
    try:
        if stored.ndim == 2:
            if photometric == "PALETTE COLOR":
                pixels = _color(stored, ds, header, photometric, warns)
            else:
                little_endian = UID(str(decoded.transfer_syntax)).is_little_endian
                pixels = _grayscale(stored, ds, header, little_endian, warns)
        else:
            pixels = _color(stored, ds, header, photometric, warns)
    except HipcadError:
        raise
    except MemoryError as err:
        raise InputTooLargeError("not enough memory to convert the pixel data") from err
    except Exception as err:
        raise BadInputError(f"cannot apply the DICOM grayscale pipeline: {_reason(err)}") from err
    return np.ascontiguousarray(pixels), warns


# --------------------------------------------------------------------------------------
# Metadata


def _text(ds, keyword: str) -> str | None:
    """An element's value as a plain str (multi-values joined with a backslash), or None."""
    try:
        value = ds.get(keyword, None)
    except Exception:
        return None
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        text = bytes(value).decode("ascii", "replace").rstrip("\x00 ")
    elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text if text != "" else None


def _shown(value: str) -> str:
    """``value`` quoted if it is a well-formed CS value, else a neutral word (it may be hostile)."""
    ok = 0 < len(value) <= 16 and all(ch.isupper() or ch.isdigit() or ch in " _" for ch in value)
    return f"'{value}'" if ok else "an unexpected value"


def _content_warnings(metadata: dict) -> list[str]:
    warns = []
    body_part = metadata.get("body_part")
    if body_part is not None:
        letters = "".join(ch for ch in body_part.upper() if ch.isalpha())
        if not any(word in letters for word in _PELVIS_WORDS):
            warns.append(f"Body Part Examined is {_shown(body_part)}, not a pelvis or hip")
    view = metadata.get("view_position")
    if view is not None and view.strip().upper() not in _FRONTAL_VIEWS:
        warns.append(f"View Position is {_shown(view)}, not AP or PA")
    return warns


# --------------------------------------------------------------------------------------


def bin_stored(stored: np.ndarray, k: int) -> np.ndarray:
    """Integer stored values averaged (rounded) over k x k blocks, in their own dtype; the last
    ``rows % k`` rows and ``columns % k`` columns are dropped. The display pipeline then runs on
    k*k times fewer pixels, as a detector with k-times larger pixels would give."""
    rows, cols = (stored.shape[0] // k) * k, (stored.shape[1] // k) * k
    wide = stored.dtype.itemsize > 2 or k > 256  # 32-bit sums hold k*k 16-bit values up to k = 256
    acc_type = np.dtype(f"{'i' if stored.dtype.kind == 'i' else 'u'}{8 if wide else 4}")
    # rows first (contiguous slices), then columns on k-times fewer rows
    by_rows = stored[0:rows:k, :cols].astype(acc_type)
    for dy in range(1, k):
        by_rows += stored[dy:rows:k, :cols]
    acc = by_rows[:, 0::k].copy()
    for dx in range(1, k):
        acc += by_rows[:, dx::k]
    n = k * k
    return ((acc + n // 2) // n).astype(stored.dtype)


def decode_dicom(source, limits: DecodeLimits = DEFAULT_LIMITS, min_side: int | None = None) -> Radiograph:
    """Decode a DICOM radiograph (path or bytes) into a :class:`Radiograph`.

    With ``min_side``, a grayscale image whose shorter side is at least twice that is decoded
    smaller: JPEG 2000 from its wavelet levels, anything else binned (:func:`bin_stored`), by the
    largest factor that keeps the shorter side >= ``min_side``.

    Raises :class:`InputTooLargeError` for a declared size beyond ``limits`` (before any
    decoding), :class:`CodecUnavailableError` when no decoder for the transfer syntax is
    installed, and :class:`BadInputError` for anything else wrong with the file.
    """
    _check_source_type(source)
    start = time.perf_counter()
    _state.dropped = 0
    with _quiet():
        try:
            decoded = read_dicom_pixels(source, limits, min_side)
            ds, header, warns = decoded.dataset, decoded.header, decoded.warnings
            k = min(decoded.stored.shape[:2]) // min_side if min_side else 1
            if k >= 2 and decoded.stored.ndim == 2 and decoded.stored.dtype.kind in "ui" and header.photometric in _GRAY:
                decoded.stored = bin_stored(decoded.stored, k)
            pixels, more = display_pixels(decoded)
            metadata = {key: _text(ds, keyword) for key, keyword in _METADATA_FIELDS.items()}
            metadata["transfer_syntax"] = str(ds.file_meta.TransferSyntaxUID)
            patient = {key: _text(ds, keyword) for key, keyword in _PATIENT_FIELDS.items()}
        except HipcadError:
            raise
        except MemoryError as err:
            raise InputTooLargeError("not enough memory to decode the DICOM file") from err
        except Exception as err:  # anything pydicom/numpy raised that the steps above did not name
            raise BadInputError(f"cannot read the DICOM file: {_reason(err)}") from err
    warns += more + _content_warnings(metadata)
    codec = codecs.SUPPORTED[metadata["transfer_syntax"]]
    dropped = getattr(_state, "dropped", 0)
    log.debug(
        "decoded a %d x %d DICOM, %d-bit, %s, in %.0f ms%s",
        header.cols,
        header.rows,
        header.bits_stored,
        codec.name,
        (time.perf_counter() - start) * 1000,
        f" ({dropped} library message(s) withheld: they may quote file contents)" if dropped else "",
    )
    return Radiograph(
        pixels=pixels,
        original_shape=(header.rows, header.cols),
        source_format="dicom",
        metadata=metadata,
        patient=patient,
        warnings=warns,
    )
