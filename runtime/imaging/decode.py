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
from hipcad.runtime.imaging.colour import colour_content
from hipcad.runtime.imaging.limits import DEFAULT_LIMITS, DecodeLimits
from hipcad.runtime.imaging.radiograph import Radiograph
from hipcad.runtime.imaging.sniff import HEAD_BYTES, not_an_image_hint, sniff

__all__ = ["HEAD_BYTES", "decode", "decode_raster", "sniff"]

# Colour is measured on a copy of about this many pixels on its shorter side (DCT scaling for JPEG).
_COLOUR_SIDE = 256
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


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
            head = fh.read(HEAD_BYTES)
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
    raise BadInputError(not_an_image_hint(head))


def decode_raster(path: Path, kind: str, limits: DecodeLimits, min_side: int | None = None) -> Radiograph:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
            cols, rows = img.size
            limits.check_dimensions(rows, cols)  # before a single pixel is decoded
            colour = None if img.mode in _GREY_MODES else _raster_colour(path, kind, img)
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
        colour=colour,
    )


def _raster_colour(path: Path, kind: str, img) -> dict:
    """:func:`colour_content` of a colour JPEG / PNG, on a reduced copy (before the grey conversion)."""
    from PIL import Image

    cols, rows = img.size
    k = max(1, min(rows, cols) // _COLOUR_SIDE)
    if kind == "jpeg":  # a second, DCT-scaled decode in colour: the main one decodes straight to grey
        with Image.open(path) as small:
            small.draft("RGB", (max(1, cols // k), max(1, rows // k)))
            return colour_content(np.asarray(small.convert("RGB")))
    small = img.reduce(k) if k > 1 and img.mode in ("RGB", "RGBA") else img
    return colour_content(np.asarray(small.convert("RGB")))


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
