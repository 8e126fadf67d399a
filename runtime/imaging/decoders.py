"""Which decoder reads the first frame of each compressed transfer syntax, with fallbacks.

pydicom tries its plugins in its own order; for three syntaxes hipcad asks for a faster one by
name, pixel-exact with pydicom's default (tests/runtime/imaging/test_decoders.py; timings in the
README), and falls back to pydicom's order when it is missing or fails:

* JPEG Lossless (process 14, SV1): ``libjpeg-turbo`` (imagecodecs, libjpeg-turbo >= 3) instead of pylibjpeg;
* JPEG-LS: ``pyjpegls`` (CharLS) instead of pylibjpeg;
* HTJ2K: ``openjph`` (imagecodecs) instead of pylibjpeg (OpenJPEG).

Lossy JPEG stays with pylibjpeg-libjpeg, the only decoder identical to today's output (libjpeg-turbo
differs by 1-3 stored values); a sequential JPEG whose scan header has the WG04 ``Se=0`` quirk
is retried with the byte fixed (:func:`fix_sequential_sos`). Reduced-resolution JPEG 2000 / HTJ2K
is :mod:`.jpeg2000`'s.
"""

from __future__ import annotations

import threading

from pydicom import uid as _uid

_PLUGIN_MODULE = "hipcad.runtime.imaging.imagecodecs_plugin"
_OURS = {
    "libjpeg-turbo": ("decode_lossless_jpeg", (_uid.JPEGLossless, _uid.JPEGLosslessSV1)),
    "openjph": ("decode_htj2k", (_uid.HTJ2KLossless, _uid.HTJ2KLosslessRPCL, _uid.HTJ2K)),
}
PREFERRED = {
    _uid.JPEGLossless: "libjpeg-turbo",
    _uid.JPEGLosslessSV1: "libjpeg-turbo",
    _uid.JPEGLSLossless: "pyjpegls",
    _uid.JPEGLSNearLossless: "pyjpegls",
    _uid.HTJ2KLossless: "openjph",
    _uid.HTJ2KLosslessRPCL: "openjph",
    _uid.HTJ2K: "openjph",
}
SOS_QUIRK_WARNING = "the JPEG scan header declares spectral selection 0..0 (an encoder bug); decoded as 0..63"

_lock = threading.Lock()
_registered = False


def register_plugins() -> None:
    """Add hipcad's plugins to pydicom's decoders, once (pydicom's ``add_plugin`` is not thread-safe)."""
    global _registered
    with _lock:
        if _registered:
            return
        from pydicom.pixels import get_decoder

        for label, (function, syntaxes) in _OURS.items():
            for ts in syntaxes:
                try:
                    get_decoder(ts).add_plugin(label, (_PLUGIN_MODULE, function))
                except (ValueError, NotImplementedError):  # already added, or no such decoder in this pydicom
                    pass
        _registered = True


def _pydicom_order(dec) -> list[str]:
    """The plugins pydicom tries when none is named, in its order."""
    available = getattr(dec, "_available", None)
    return list(available) if isinstance(available, dict) else list(dec.available_plugins)


def plugin_order(ts: str) -> list[str]:
    """The plugins tried for ``ts``, first to last ('' = pydicom's own order); [] if none is installed."""
    from pydicom.pixels import get_decoder

    register_plugins()
    try:
        dec = get_decoder(ts)
    except NotImplementedError:
        return []
    if not dec.is_encapsulated:
        return [""]
    order = _pydicom_order(dec)
    preferred = PREFERRED.get(str(ts))
    if preferred in order:
        order.remove(preferred)
        order.insert(0, preferred)
    return order


def plugin_in_use(ts: str) -> str | None:
    """The plugin that decodes ``ts`` here when all goes well (None for native data or none installed)."""
    order = [p for p in plugin_order(ts) if p]
    return order[0] if order else None


def decode_frame(ds, ts):
    """(array, pixel properties) of frame 0: by the preferred plugin when it is installed, else (or
    when it fails) by pydicom's own order of plugins, whose error names each plugin's reason."""
    from pydicom.pixels import get_decoder

    preferred = PREFERRED.get(str(ts))
    order = plugin_order(ts)
    if preferred and order and order[0] == preferred:
        try:
            return get_decoder(ts).as_array(ds, index=0, decoding_plugin=preferred)
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - pydicom's plugins may read it, and say why not if they cannot
            pass
    return get_decoder(ts).as_array(ds, index=0)


def fix_sequential_sos(frame: bytes) -> bytes | None:
    """A sequential-DCT JPEG (SOF0/SOF1) whose scan header says Ss=0, Se=0, with Se set to 63; else None.

    Some encoders (those of the DICOM WG04 ``*_JPLY`` test set among them, e.g. pydicom's
    JPEG-lossy.dcm = NM1_JPLY) write Se=0 in a sequential scan, where only 63 is valid. IJG libjpeg
    and libjpeg-turbo warn and decode it as 0..63; pylibjpeg-libjpeg refuses it (error -1038).
    Patching the byte gives exactly the stream the encoder meant.
    """
    sof = next((frame.find(m) for m in (b"\xff\xc0", b"\xff\xc1") if frame.find(m) >= 0), -1)
    sos = frame.find(b"\xff\xda")
    if sof < 0 or sos < 0 or sos + 5 >= len(frame):
        return None
    at = sos + 5 + 2 * frame[sos + 4]  # Ns component selectors, then Ss, Se, Ah/Al
    if at + 2 >= len(frame) or frame[at] != 0 or frame[at + 1] == 63:
        return None
    fixed = bytearray(frame)
    fixed[at + 1] = 63
    return bytes(fixed)


def decode_fixed_jpeg(ds, ts, frames: int):
    """Frame 0 of a lossy JPEG with the ``Se=0`` quirk, decoded after the fix; None when it does
    not apply or still fails. Replaces the data set's Pixel Data with that one fixed frame."""
    from pydicom.encaps import encapsulate, generate_frames

    if str(ts) not in (_uid.JPEGBaseline8Bit, _uid.JPEGExtended12Bit):
        return None
    try:
        fixed = fix_sequential_sos(next(generate_frames(ds.PixelData, number_of_frames=frames)))
        if fixed is None:
            return None
        ds.PixelData = encapsulate([fixed])
        if frames > 1:
            ds.NumberOfFrames = 1
        return decode_frame(ds, ts)
    except Exception:  # noqa: BLE001 - the caller reports the first error
        return None
