"""Decoding any supported radiograph file: DICOM (pydicom), JPEG and PNG (Pillow).

The format is sniffed from the content, never trusted from the file name. Every failure is a
:class:`~hipcad.runtime.errors.BadInputError` with a message for the person at the console.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from hipcad.runtime.errors import BadInputError, InputTooLargeError
from hipcad.runtime.imaging.limits import DEFAULT_LIMITS, DecodeLimits
from hipcad.runtime.imaging.radiograph import Radiograph

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def sniff(head: bytes) -> str | None:
    """'dicom' | 'jpeg' | 'png' | None from a file's first bytes (>= 132 of them)."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head.startswith(PNG_MAGIC):
        return "png"
    # DICOM without the 128-byte preamble: starts with a group 0x0002 or 0x0008 element tag.
    if len(head) >= 8 and head[0:2] in (b"\x02\x00", b"\x08\x00") and head[4:6].isalpha():
        return "dicom"
    return None


def decode(path: str | os.PathLike, limits: DecodeLimits = DEFAULT_LIMITS, min_side: int | None = None) -> Radiograph:
    """Decode ``path`` into a display-ready 8-bit radiograph.

    ``min_side`` lets JPEG decoding use libjpeg's DCT scaling (1/2, 1/4, 1/8), and DICOM decoding
    average the stored values over k x k blocks, as long as the decoded image keeps at least that
    many pixels on its shorter side; the stored geometry is kept in ``Radiograph.original_shape``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(132)
    except FileNotFoundError as err:
        raise BadInputError(f"file not found: {path.name}") from err
    except IsADirectoryError as err:
        raise BadInputError(f"{path.name} is a directory, not an image") from err
    except OSError as err:
        raise BadInputError(f"cannot read {path.name}: {err.strerror or err}") from err
    if size == 0:
        raise BadInputError("file is empty (0 bytes)")
    limits.check_file_size(size)
    kind = sniff(head)
    if kind == "dicom":
        from hipcad.runtime.imaging.dicom import decode_dicom

        return decode_dicom(path, limits, min_side)
    if kind in ("jpeg", "png"):
        return decode_raster(path, kind, limits, min_side)
    raise BadInputError("not a DICOM, JPEG or PNG file (unrecognised content)")


def decode_raster(path: Path, kind: str, limits: DecodeLimits, min_side: int | None = None) -> Radiograph:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            cols, rows = img.size
            limits.check_dimensions(rows, cols)  # before a single pixel is decoded
            if kind == "jpeg" and min_side:
                # draft() picks the largest DCT scale-down that keeps the image >= the asked size
                scale = max(1.0, min(rows, cols) / min_side)
                img.draft("L", (int(cols / scale), int(rows / scale)))
            img = _to_gray(img)
            img.load()
            pixels = np.asarray(img)
    except InputTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputTooLargeError(
            f"{kind.upper()} declares an image beyond the limit of {limits.max_pixels / 1e6:.0f} megapixels ({err})"
        ) from err
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's ways of saying corrupt/truncated
        raise BadInputError(f"cannot decode {kind.upper()}: {err}") from err
    if pixels.dtype != np.uint8:
        raise BadInputError(f"unsupported {kind.upper()} pixel format")
    return Radiograph(
        pixels=np.ascontiguousarray(pixels),
        original_shape=(rows, cols),
        source_format=kind,
    )


def _to_gray(img):
    """Pillow image -> 8-bit grayscale ('L'); 16-bit PNG is rescaled over its full range."""
    from PIL import Image

    if img.mode == "L":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.rint(arr).astype(np.uint8), mode="L")
    return img.convert("L")
