"""JPEG 2000 and HTJ2K frames decoded at reduced resolution from their wavelet levels (Pillow's
OpenJPEG ``reduce``), for radiographs much larger than the model and the overlay need.

OpenJPEG decodes code blocks in parallel when its ``OPJ_NUM_THREADS`` environment variable asks
for threads (read when each decoder is created). hipcad sets it, unless it is already set, to the
number of CPUs this process may use, at most :data:`MAX_THREADS`; set ``OPJ_NUM_THREADS=1`` in
the service's environment to keep decoding on one core.
"""

from __future__ import annotations

import io
import os
import threading
from typing import TYPE_CHECKING

import numpy as np

from hipcad.runtime.imaging.dicom_display import GRAY
from hipcad.runtime.imaging.frame_check import J2K_SYNTAXES

if TYPE_CHECKING:
    from hipcad.runtime.imaging.dicom_read import ImageHeader

MAX_THREADS = 4


_threads_lock = threading.Lock()


def _threads() -> None:
    """Set ``OPJ_NUM_THREADS`` once, before the first reduced decode, unless the environment has it."""
    with _threads_lock:
        if "OPJ_NUM_THREADS" not in os.environ:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            os.environ["OPJ_NUM_THREADS"] = str(max(1, min(MAX_THREADS, cpus)))


def decode_j2k_reduced(ds, ts, header: ImageHeader, reduce: int):
    """The first frame of an unsigned grayscale JPEG 2000 image at 1/2**reduce of its size, or
    None to take the full decoding path.

    JPEG 2000 stores its image as wavelet levels: Pillow's OpenJPEG decoder can stop before the
    finest ones (``Image.reduce``), which for a 10-megapixel radiograph takes a quarter of the
    time of a full decode and gives the wavelet's own low-pass image. Anything unusual (signed or
    colour data, a codestream Pillow refuses, a size that does not match the header) goes the
    full way, where errors are reported. Of a multi-frame image, the first frame.
    """
    if str(ts) not in J2K_SYNTAXES or header.photometric not in GRAY or header.samples != 1 or header.signed:
        return None
    # Pillow sizes a reduced image as (n + p/2) // p, OpenJPEG decodes ceil(n / p): take a level
    # where they agree (else Pillow reports a broken stream)
    while reduce > 0 and any((n + (1 << reduce >> 1)) >> reduce != -(-n >> reduce) for n in (header.rows, header.cols)):
        reduce -= 1
    if reduce == 0:
        return None
    from PIL import Image
    from pydicom.encaps import generate_frames

    try:  # Pillow's DecompressionBombWarning is silenced by quiet_decoding(); our limits were checked on the header
        frame = next(generate_frames(ds.PixelData, number_of_frames=header.frames))
        precision = j2k_precision(frame)
        if precision is None or not (precision == 8 if header.bits_allocated <= 8 else 9 <= precision <= 16):
            return None
        image = Image.open(io.BytesIO(frame), formats=["JPEG2000"])
        if image.size != (header.cols, header.rows) or image.mode not in ("L", "I;16"):
            return None
        image.reduce = reduce
        _threads()
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


def j2k_precision(codestream: bytes) -> int | None:
    """Bit depth of an unsigned single-component J2K codestream (its SIZ marker), else None."""
    # SOC, SIZ marker, Lsiz, Rsiz, Xsiz..YTOsiz (8 x 4 bytes), Csiz, then Ssiz per component
    if len(codestream) < 43 or codestream[:4] != b"\xff\x4f\xff\x51":
        return None
    components = int.from_bytes(codestream[40:42], "big")
    ssiz = codestream[42]
    if components != 1 or ssiz & 0x80:
        return None
    return (ssiz & 0x7F) + 1


