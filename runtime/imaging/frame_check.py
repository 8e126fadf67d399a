"""The first frame's compressed header checked against the DICOM header before any codec runs.

Codecs trust the frame header of the codestream, not the DICOM header, and some fail badly on a
hostile one (found by fuzzing, see tests/fuzz):

* a JPEG / JPEG-LS frame header declaring 0 rows ("height defined later by a DNL marker"):
  pylibjpeg-libjpeg then allocates without bound inside C code that holds the GIL (gigabytes in
  seconds), and keeps the memory after failing;
* a codestream larger than the DICOM header says: the codec decodes all of it (up to 65535 x 65535)
  before pydicom compares the shapes;
* a frame starting like a JP2 header whose boxes do not lead to the codestream: pydicom's
  ``get_j2k_parameters`` loops for ever on a box of length 0 (found twice: with the JP2 signature,
  and -- by atheris -- with a signature pydicom recognises by its first 8 bytes only).

:func:`check_frame_header` refuses these with a :class:`BadInputError`; anything it cannot parse is
left to the codec, which says what is wrong.
"""

from __future__ import annotations

import struct

from hipcad.runtime.errors import BadInputError

JPEG_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
})
# the JPEG 2000 and HTJ2K syntaxes hipcad supports (Part 2 multi-component, .92 / .93, is refused
# earlier, by transfer_syntaxes); jpeg2000 decodes these at reduced resolution
J2K_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
})
# start-of-frame markers: SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC); JPEG-LS SOF55 (F7)
_SOF = (frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}) | {0xF7}
_NO_LENGTH = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
JP2_PREFIX = JP2_SIGNATURE[:8]  # what pydicom takes for a JP2 header


def jpeg_frame_header(cs: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) of the first start-of-frame segment of a JPEG or JPEG-LS
    codestream, or None when none comes before the first scan."""
    if cs[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 4 <= len(cs):
        if cs[pos] != 0xFF:
            return None
        marker = cs[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        if marker == 0xDA:  # a scan before any frame header
            return None
        if marker in _SOF:
            if pos + 10 > len(cs):
                return None
            rows, cols, components = struct.unpack_from(">HHB", cs, pos + 5)
            return rows, cols, components
        (length,) = struct.unpack_from(">H", cs, pos + 2)
        if length < 2:
            return None
        pos += 2 + length
    return None


def check_jp2_boxes(cs: bytes) -> None:
    """A frame that starts like a JP2 file (not conformant in DICOM, but read): walk its boxes as
    pydicom's ``get_j2k_parameters`` does -- which it recognises by the first 8 bytes only, and
    where a box of length 0 is a loop for ever -- and require them to lead to the codestream box."""
    if not cs.startswith(JP2_PREFIX):
        return
    offset = len(JP2_SIGNATURE)
    while offset < len(cs):
        length = int.from_bytes(cs[offset:offset + 4], "big")
        if cs[offset + 4:offset + 8] == b"jp2c":
            return
        if length == 0:
            raise BadInputError("cannot decode the JPEG 2000 pixel data: its JP2 header has a box of length 0")
        offset += length
    raise BadInputError("cannot decode the JPEG 2000 pixel data: its JP2 header has no codestream box")


def j2k_size(cs: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from the SIZ marker of a JPEG 2000 codestream."""
    at = cs.find(b"\xff\x4f\xff\x51", 0, 4096)
    if at < 0 or at + 42 > len(cs):
        return None
    xsiz, ysiz, x0, y0 = struct.unpack_from(">IIII", cs, at + 8)
    (components,) = struct.unpack_from(">H", cs, at + 40)
    return ysiz - y0, xsiz - x0, components


def first_frame(ds, frames: int) -> bytes | None:
    from pydicom.encaps import generate_frames

    try:
        return next(generate_frames(ds.PixelData, number_of_frames=max(frames, 1)))
    except Exception:  # noqa: BLE001 - a broken encapsulation: the decoder says what is wrong
        return None


def check_frame_header(ds, ts, header) -> None:
    """Refuse an encapsulated JPEG / JPEG-LS / JPEG 2000 frame whose own header declares 0 rows, or
    another size or number of components than the DICOM header (``header``: rows, cols, samples,
    frames)."""
    ts = str(ts)
    if ts not in JPEG_SYNTAXES and ts not in J2K_SYNTAXES:
        return
    frame = first_frame(ds, header.frames)
    if not frame:
        return
    if ts in JPEG_SYNTAXES:
        found = jpeg_frame_header(frame)
        if found is not None and found[0] == 0:
            raise BadInputError("cannot decode the JPEG pixel data: its frame header declares 0 rows "
                                "(a height given later by a DNL marker is not supported)")
    else:
        check_jp2_boxes(frame)
        found = j2k_size(frame)
    if found is None:
        return
    rows, cols, components = found
    if (rows, cols) != (header.rows, header.cols):
        raise BadInputError(f"the compressed image is {cols} x {rows} pixels but the DICOM header says "
                            f"{header.cols} x {header.rows}")
    if components != header.samples:
        raise BadInputError(f"the compressed image has {components} component(s) but the DICOM header says "
                            f"{header.samples} sample(s) per pixel")
