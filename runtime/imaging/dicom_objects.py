"""What a DICOM file without (complete) pixel data is, in words a radiographer understands: a
DICOMDIR, a non-image object (structured report, key object selection, PDF, presentation state,
radiotherapy object, waveform...), an image object without pixels, or a truncated file.

Names come from pydicom's UID registry, never from text in the file.
"""

from __future__ import annotations

from typing import BinaryIO

from hipcad.runtime.imaging.transfer_syntaxes import known_uid_name, safe_uid

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# SOP class UID prefixes -> what such an object is (PS3.4 Annex B.5), most specific first.
_NON_IMAGE_KINDS = (
    ("1.2.840.10008.5.1.4.1.1.88.59", "a list of references to images stored elsewhere"),
    ("1.2.840.10008.5.1.4.1.1.88.", "a structured report: text and codes"),
    ("1.2.840.10008.5.1.4.1.1.11.", "display settings for images stored elsewhere"),
    ("1.2.840.10008.5.1.4.1.1.104.", "a document wrapped in DICOM"),
    ("1.2.840.10008.5.1.4.1.1.9.", "a waveform"),
    ("1.2.840.10008.5.1.4.1.1.481.", "a radiotherapy object"),
    ("1.2.840.10008.5.1.4.1.1.66", "raw data, a registration or fiducials"),
    ("1.2.840.10008.5.1.4.1.1.67", "a real-world value mapping"),
    ("1.2.840.10008.5.1.4.1.1.68.", "a surface mesh"),
    ("1.2.840.10008.5.1.4.1.1.82.", "measurements"),
    ("1.2.840.10008.5.1.4.34.", "a radiotherapy object"),
    ("1.2.840.10008.5.1.4.38.", "a hanging protocol"),
    ("1.2.840.10008.5.1.4.39.", "a colour palette"),
)
# Storage SOP classes under those prefixes that do hold pixel data (RT Image, RT Dose).
_IMAGE_EXCEPTIONS = ("1.2.840.10008.5.1.4.1.1.481.1", "1.2.840.10008.5.1.4.1.1.481.2")


def sop_class(ds) -> str:
    """The SOP Class UID (data set, else file meta), '' when absent or not a well-formed UID."""
    for where, keyword in ((ds, "SOPClassUID"), (getattr(ds, "file_meta", None), "MediaStorageSOPClassUID")):
        if where is None:
            continue
        try:
            value = where.get(keyword, None)
        except Exception:  # noqa: BLE001 - a malformed value: as if absent
            continue
        if value:
            return safe_uid(str(value).strip())
    return ""


def says_what_it_is(ds) -> bool:
    """An image, or an object that says what it is (its SOP class; a DICOMDIR's records)."""
    return ("PixelData" in ds and "Rows" in ds and "Columns" in ds) or bool(sop_class(ds)) \
        or "DirectoryRecordSequence" in ds


def _a(name: str) -> str:
    """'a' or 'an' before a SOP class name ('an RT Plan', 'an MR Image', 'a CT Image')."""
    word = name.split(" ")[0]
    vowel_sound = word[:1] in "AEFHILMNORSX" if (word.isupper() and len(word) <= 4) else word[:1].upper() in "AEIOU"
    return f"an {name}" if vowel_sound else f"a {name}"


def _sop_name(uid: str) -> str:
    """pydicom's registered name of a SOP class, without ' Storage'."""
    name = known_uid_name(uid)
    return name[: -len(" Storage")] if name.endswith(" Storage") else name


def _dicomdir_message(ds) -> str:
    images = 0
    try:
        for record in ds.get("DirectoryRecordSequence", None) or ():
            images += str(record.get("DirectoryRecordType", "")).strip().upper() == "IMAGE"
    except Exception:  # noqa: BLE001 - the count is only a courtesy
        images = 0
    listed = f" (it lists {images} image{'s' if images != 1 else ''})" if images else ""
    return (f"this is a DICOMDIR, the index of a DICOM disc or folder{listed}, not an image: "
            "pass the image files it refers to, or the folder that holds them")


def truncation_message(ds, fp: BinaryIO | None) -> str | None:
    """Why a data set that pydicom read lacks (part of) its pixel data, when the file is cut short.

    pydicom stops quietly at the end of a file: a file cut before or inside its Pixel Data comes
    back without the element (cut inside encapsulated pixel data, with no elements at all). The
    raw file tells: a Pixel Data element whose declared length runs past the end of the file,
    encapsulated pixel data without its closing delimiter, or an image header and no Pixel Data.
    Reads the whole file: call it on the error path only.
    """
    data = b""
    if fp is not None:
        try:
            fp.seek(0)
            data = fp.read()
        except Exception:  # noqa: BLE001 - nothing more to say than the caller's message
            data = b""
    size = len(data)
    for tag, order in ((b"\xe0\x7f\x10\x00", "little"), (b"\x7f\xe0\x00\x10", "big")):
        at = data.find(tag)
        while at >= 0:  # the first may be an icon's, inside a sequence: check each
            explicit = data[at + 4 : at + 6] in (b"OB", b"OW", b"UN")
            head = 12 if explicit else 8
            field = data[at + 8 : at + 12] if explicit else data[at + 4 : at + 8]
            if len(field) < 4:
                return "pixel data truncated: the file ends inside the Pixel Data element header"
            length = int.from_bytes(field, order)
            if length == 0xFFFFFFFF:
                if data.find(b"\xfe\xff\xdd\xe0" if order == "little" else b"\xff\xfe\xe0\xdd", at) < 0:
                    return (f"pixel data truncated: the compressed pixel data stops after {size - at - head} bytes, "
                            "before its end (the file is cut short)")
            elif at + head + length > size:
                return (f"pixel data truncated: the Pixel Data declares {length} bytes, "
                        f"the file holds {max(size - at - head, 0)}")
            at = data.find(tag, at + 4)
    if "Rows" in ds and "Columns" in ds and "PixelData" not in ds:
        return "DICOM has no pixel data: the file ends after its image header (truncated?)"
    if len(ds) == 0 and getattr(ds, "file_meta", None):
        return "the file is truncated or corrupt: nothing could be read after its file meta information"
    return None


def no_pixel_data_message(ds, fp: BinaryIO | None = None) -> str:
    """The message for a DICOM data set without Pixel Data: a DICOMDIR, a non-image object named
    by its SOP class, a truncated file, or an image object without pixels."""
    sop = sop_class(ds)
    if sop == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return _dicomdir_message(ds)
    name = _sop_name(sop)
    for prefix, kind in _NON_IMAGE_KINDS:
        if sop.startswith(prefix) and sop not in _IMAGE_EXCEPTIONS:
            return f"not an image: the file is {f'{_a(name)} ({kind})' if name else kind}"
    truncated = truncation_message(ds, fp)
    if truncated:
        return truncated
    if name:
        return f"the file is {_a(name)} object without pixel data: there is no image to read"
    return "DICOM has no pixel data"
