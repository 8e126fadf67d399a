"""pydicom 3 decoder plugins backed by imagecodecs, for the two syntaxes where it is both faster
than pydicom's default plugin and pixel-exact with it (tests/runtime/imaging/test_decoders.py):

* JPEG Lossless (process 14, any predictor): libjpeg-turbo >= 3.0 (``imagecodecs.jpeg8_decode``),
  ~6x less CPU than pylibjpeg-libjpeg on a 10-megapixel radiograph;
* HTJ2K: OpenJPH (``imagecodecs.htj2k_decode``), ~2.5x less CPU than pylibjpeg-openjpeg at full size.

Grayscale frames only: a colour frame raises, and :mod:`hipcad.runtime.imaging.decoders` falls back
to pydicom's own plugins. pydicom does the rest, as for its own plugins (sign, bits above Bits
Stored, reshaping). Registered and asked for by name in :mod:`~hipcad.runtime.imaging.decoders`.
"""

from __future__ import annotations

from pydicom import uid

_LOSSLESS_JPEG = (uid.JPEGLossless, uid.JPEGLosslessSV1)
_HTJ2K = (uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K)

DECODER_DEPENDENCIES = {ts: ("imagecodecs>=2023.9.18",) for ts in (*_LOSSLESS_JPEG, *_HTJ2K)}


def _version(text: str) -> tuple[int, ...]:
    """(3, 1, 3) from 'libjpeg_turbo 3.1.3/8.0'."""
    digits = "".join(ch if ch.isdigit() or ch == "." else " " for ch in text).split()
    return tuple(int(p) for p in digits[0].split(".") if p) if digits else (0,)


def is_available(tsyntax: str) -> bool:
    """libjpeg-turbo decodes lossless JPEG from version 3.0 on; any OpenJPH decodes HTJ2K."""
    try:
        import imagecodecs
    except ImportError:
        return False
    try:
        if tsyntax in _LOSSLESS_JPEG:
            return bool(imagecodecs.JPEG8.available) and _version(imagecodecs.jpeg8_version()) >= (3, 0)
        if tsyntax in _HTJ2K:
            return bool(imagecodecs.HTJ2K.available)
    except Exception:  # noqa: BLE001 - an imagecodecs build without these codecs
        return False
    return False


def _grey(runner) -> None:
    if runner.samples_per_pixel != 1:
        raise ValueError("this plugin decodes grayscale frames only")


def _as_frame(arr, runner) -> bytearray:
    if arr.ndim != 2:
        raise ValueError(f"unexpected decoded shape {arr.shape}")
    # the container follows the codestream's sample precision, as pydicom's pylibjpeg plugin does
    runner.set_option("bits_allocated", 8 * arr.dtype.itemsize)
    return bytearray(arr.tobytes())


def decode_lossless_jpeg(src: bytes, runner) -> bytearray:
    import imagecodecs

    _grey(runner)
    return _as_frame(imagecodecs.jpeg8_decode(src), runner)


def decode_htj2k(src: bytes, runner) -> bytearray:
    import imagecodecs

    _grey(runner)
    return _as_frame(imagecodecs.htj2k_decode(src), runner)
