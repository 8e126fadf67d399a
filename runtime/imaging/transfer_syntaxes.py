"""The DICOM transfer syntaxes hipcad reads, and whether a decoder for each is installed.

Decoding itself is pydicom's: every compressed transfer syntax is handled by one of pydicom's
decoder plugins (``pydicom.pixels.get_decoder(uid)``), which in turn needs a third-party
package (pylibjpeg + its libjpeg / openjpeg plugins, pyjpegls, imagecodecs, pillow or gdcm);
:mod:`hipcad.runtime.imaging.decoders` picks the fastest pixel-exact one. This module is the
single table of what hipcad accepts, what each entry needs, whether that is installed here and
which plugin decodes it, so that :mod:`hipcad.runtime.imaging.dicom` can refuse a file with a
message that says exactly what to install, and a health check can list the state of every codec.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom import uid as _uid

from hipcad.runtime.imaging.decoders import plugin_in_use, register_plugins


@dataclass(frozen=True)
class Codec:
    """One supported transfer syntax."""

    uid: str
    name: str
    lossy: bool
    # The pip packages that give pydicom a decoder for it (those of hipcad's runtime
    # dependencies first); empty when pydicom decodes it on its own.
    install: tuple[str, ...] = ()
    alternatives: str = ""  # other packages that also work, for the message


@dataclass(frozen=True)
class CodecStatus:
    """The state of one supported transfer syntax on this machine."""

    uid: str
    name: str
    lossy: bool
    available: bool
    plugins: tuple[str, ...]  # pydicom decoder plugins usable now (empty for native: none needed)
    decoder: str | None  # the plugin that decodes it here (the preferred one when installed), None for native
    install: str | None  # what to run when it is not available, else None
    missing: tuple[str, ...]  # pydicom's own description of the missing dependencies


_LIBJPEG = ("pylibjpeg", "pylibjpeg-libjpeg")
_OPENJPEG = ("pylibjpeg", "pylibjpeg-openjpeg")

# The transfer syntaxes hipcad supports, in the order of the DICOM standard (PS3.5 Annex A).
SUPPORTED: dict[str, Codec] = {
    c.uid: c
    for c in (
        Codec(_uid.ImplicitVRLittleEndian, "Implicit VR Little Endian", False),
        Codec(_uid.ExplicitVRLittleEndian, "Explicit VR Little Endian", False),
        Codec(_uid.DeflatedExplicitVRLittleEndian, "Deflated Explicit VR Little Endian", False),
        Codec(_uid.ExplicitVRBigEndian, "Explicit VR Big Endian", False),
        Codec(_uid.JPEGBaseline8Bit, "JPEG Baseline (8-bit)", True, _LIBJPEG, "pillow"),
        Codec(_uid.JPEGExtended12Bit, "JPEG Extended (12-bit)", True, _LIBJPEG, "pillow for 8-bit data"),
        Codec(_uid.JPEGLossless, "JPEG Lossless (Process 14)", False, _LIBJPEG, "imagecodecs or python-gdcm"),
        Codec(_uid.JPEGLosslessSV1, "JPEG Lossless (Process 14, SV1)", False, _LIBJPEG, "imagecodecs or python-gdcm"),
        Codec(_uid.JPEGLSLossless, "JPEG-LS Lossless", False, ("pyjpegls",), "pylibjpeg pylibjpeg-libjpeg"),
        Codec(_uid.JPEGLSNearLossless, "JPEG-LS Near-Lossless", True, ("pyjpegls",), "pylibjpeg pylibjpeg-libjpeg"),
        Codec(_uid.JPEG2000Lossless, "JPEG 2000 Lossless", False, _OPENJPEG, "pillow"),
        Codec(_uid.JPEG2000, "JPEG 2000", True, _OPENJPEG, "pillow"),
        # HTJ2K (2023): OpenJPEG >= 2.5 (pylibjpeg-openjpeg >= 2.0) and OpenJPH (imagecodecs) decode it.
        Codec(_uid.HTJ2KLossless, "HTJ2K Lossless", False, _OPENJPEG, "imagecodecs"),
        Codec(_uid.HTJ2KLosslessRPCL, "HTJ2K Lossless RPCL", False, _OPENJPEG, "imagecodecs"),
        Codec(_uid.HTJ2K, "HTJ2K", True, _OPENJPEG, "imagecodecs"),
        # pydicom's own (numpy) RLE decoder always works; pylibjpeg-rle is faster.
        Codec(_uid.RLELossless, "RLE Lossless", False, ("pylibjpeg", "pylibjpeg-rle")),
    )
}


def _decoder(uid: str):
    from pydicom.pixels import get_decoder

    try:
        return get_decoder(uid)
    except NotImplementedError:
        return None


def status_for(uid: str) -> CodecStatus | None:
    """The state of one transfer syntax, or None when hipcad does not support it."""
    codec = SUPPORTED.get(str(uid))
    if codec is None:
        return None
    register_plugins()
    dec = _decoder(codec.uid)
    decoder = None
    if dec is None:  # pydicom without a decoder for it at all
        available, plugins, missing = False, (), ("this pydicom has no decoder for it",)
    elif not dec.is_encapsulated:
        available, plugins, missing = True, (), ()
    else:
        available = bool(dec.is_available)
        plugins = tuple(dec.available_plugins)
        missing = tuple(dec.missing_dependencies)
        decoder = plugin_in_use(codec.uid)
    install = None
    if not available:
        install = "pip install " + " ".join(codec.install) if codec.install else "pip install --upgrade pydicom"
        if codec.alternatives:
            install += f" (or {codec.alternatives})"
    return CodecStatus(codec.uid, codec.name, codec.lossy, available, plugins, decoder, install, missing)


def codec_status() -> list[CodecStatus]:
    """The state of every supported transfer syntax on this machine (cheap: no decoding)."""
    return [status_for(uid) for uid in SUPPORTED]  # type: ignore[misc]


def unavailable_message(uid: str) -> str | None:
    """A one-line message for the console when ``uid`` cannot be decoded here, else None.

    Untrusted UIDs (not digits and dots) are not echoed.
    """
    status = status_for(uid)
    if status is None:
        shown = safe_uid(uid)
        known = known_uid_name(uid)
        if known:
            what = f"{known} ({shown})"
        else:
            what = f"transfer syntax {shown}" if shown else "an invalid transfer syntax UID"
        return f"the file uses {what}, which hipcad does not support"
    if status.available:
        return None
    return f"no decoder for {status.name} ({status.uid}) is installed; install it with: {status.install}"


def safe_uid(uid: object) -> str:
    text = str(uid)
    if 0 < len(text) <= 64 and all(ch.isdigit() or ch == "." for ch in text):
        return text
    return ""


def known_uid_name(uid: object) -> str:
    text = safe_uid(uid)
    if not text:
        return ""
    name = _uid.UID(text).name
    return "" if name == text else name
