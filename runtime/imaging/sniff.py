"""What kind of file this is, from its first bytes: DICOM (with or without the 128-byte preamble),
JPEG, PNG, or something else that a person should be told about (a gzip, a ZIP, a PDF).

Nothing here trusts a file name. A DICOM file without preamble (old CR exports, raw data sets
written by toolkits) is recognised by walking its first data elements in each of the three
uncompressed encodings, so that a CSV, a ZIP or random bytes are not mistaken for one.
"""

from __future__ import annotations

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# How many leading bytes callers pass to sniff(): enough to walk a few data elements of a DICOM
# file without preamble (132 bytes still work, with less evidence).
HEAD_BYTES = 1024

_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())  # 2 reserved bytes + 32-bit length
_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_ENCODINGS = ((True, True), (False, True), (True, False))  # (little endian, explicit VR)


def _known_tag(tag: int) -> bool:
    from pydicom.datadict import dictionary_has_tag

    return (tag & 0xFFFF) == 0 or dictionary_has_tag(tag)  # a group length or a standard element


def _may_be_undefined(tag: int, vr: bytes | None) -> bool:
    """Whether an element may have an undefined length: a sequence, or Pixel Data (PS3.5 7.1.3)."""
    if tag == _PIXEL_DATA:
        return True
    if vr is not None:
        return vr in (b"SQ", b"UN")
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return tag >> 16 & 1 == 1  # a private element: may be a sequence


def _walk_elements(head: bytes, little: bool, explicit: bool) -> bool:
    """Do the first data elements of ``head`` parse as a DICOM data set in this encoding?

    Element tags in ascending order (group 0002 or later), even value lengths, a standard first
    element, and (implicit VR) standard tags only. At least two elements must check out, or one
    that runs to the end of ``head``.
    """
    order = "little" if little else "big"
    pos, prev, seen = 0, -1, 0
    while pos + 8 <= len(head):
        group = int.from_bytes(head[pos : pos + 2], order)
        tag = (group << 16) | int.from_bytes(head[pos + 2 : pos + 4], order)
        if tag <= prev or group < 0x0002 or group == 0xFFFE:
            return False
        if seen == 0 and (group % 2 or not _known_tag(tag)):
            return False
        if explicit:
            vr = bytes(head[pos + 4 : pos + 6])
            if vr not in _VRS:
                return False
            if vr in _LONG_VRS:
                if pos + 12 > len(head):
                    return seen >= 1
                length, size = int.from_bytes(head[pos + 8 : pos + 12], order), 12
            else:
                length, size = int.from_bytes(head[pos + 6 : pos + 8], order), 8
        else:
            if group % 2 == 0 and not _known_tag(tag):
                return False
            length, size = int.from_bytes(head[pos + 4 : pos + 8], order), 8
        if length == _UNDEFINED:  # a sequence or encapsulated pixel data: cannot be skipped here
            return _may_be_undefined(tag, bytes(head[pos + 4 : pos + 6]) if explicit else None)
        if length % 2 or (length > 1 << 20 and tag != _PIXEL_DATA):
            return False
        seen += 1
        prev = tag
        pos += size + length
        if tag == _PIXEL_DATA:
            return True
    return seen >= 2 or (seen == 1 and pos >= len(head))


def sniff(head: bytes) -> str | None:
    """'dicom' | 'jpeg' | 'png' | None from a file's first bytes (pass HEAD_BYTES of them).

    DICOM is recognised by 'DICM' after the 128-byte preamble or, without preamble, by its first
    data elements in Explicit VR Little Endian, Explicit VR Big Endian or Implicit VR Little Endian.
    """
    head = bytes(head)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head.startswith(PNG_MAGIC):
        return "png"
    if len(head) >= 8 and any(_walk_elements(head, little, explicit) for little, explicit in _ENCODINGS):
        return "dicom"
    return None


def not_an_image_hint(head: bytes) -> str:
    """Why a file that :func:`sniff` refused is not read, in a few words (never its bytes)."""
    for magic, what in (
        (b"\x1f\x8b", "a gzip-compressed file: decompress it first"),
        (b"PK\x03\x04", "a ZIP archive: extract it first"),
        (b"%PDF", "a PDF document, not an image"),
    ):
        if head.startswith(magic):
            return what
    return "not a DICOM, JPEG or PNG file (unrecognised content)"
