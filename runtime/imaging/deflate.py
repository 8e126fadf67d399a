"""Deflated Explicit VR Little Endian DICOM: a bounded look before pydicom inflates the dataset.

pydicom inflates a Deflated dataset in memory in one call. :func:`guard_deflate` inflates it first
in bounded chunks, keeping nothing, and refuses a stream that inflates past the file-size limit
(a zip bomb), is truncated or corrupt. :func:`inflate_prefix` gives the first bytes of the dataset
only (the worker's SOP Instance UID peek reads no further).

Why the loop is written this way: the first version fed ``unconsumed_tail`` back until it was empty.
When the deflate stream ends while input is still pending, and the previous call had stopped at the
output limit leaving a tail, CPython's ``save_unconsumed_input`` (Modules/zlibmodule.c) moves the
leftover to ``unused_data`` and stores the same leftover again as ``unconsumed_tail``: every further
call returns nothing and leaves the tail as it was, so that loop never ended (and ``unused_data``
grew at every turn). Here the loop stops at ``eof``, and any turn that neither consumes input nor
produces output is refused. Bytes after the end of the stream are ignored, as pydicom ignores them.
"""

from __future__ import annotations

import zlib
from typing import BinaryIO

from hipcad.runtime.errors import BadInputError, InputTooLargeError
from hipcad.runtime.imaging.limits import DecodeLimits

DEFLATED = "1.2.840.10008.1.2.1.99"
READ_CHUNK = 1 << 20
OUT_CHUNK = 1 << 24


def inflated_size(fp: BinaryIO, cap: int) -> int:
    """Inflate the raw deflate stream at ``fp``'s position without keeping the output; its size.

    Raises :class:`InputTooLargeError` past ``cap`` bytes, :class:`BadInputError` for a corrupt or
    truncated stream. Every turn of the loop consumes input, produces output (at most ``cap`` in
    all) or ends it."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof:
            chunk = inflater.unconsumed_tail or fp.read(READ_CHUNK)
            out = inflater.decompress(chunk, OUT_CHUNK)
            total += len(out)
            if total > cap:
                raise InputTooLargeError(f"deflated DICOM inflates to over {cap / 2**20:.0f} MiB, the file-size limit")
            if inflater.eof:
                break
            if not chunk and not out:
                raise BadInputError("corrupt deflated DICOM: the deflate stream is truncated")
            if chunk and not out and len(inflater.unconsumed_tail) == len(chunk):
                raise BadInputError("corrupt deflated DICOM: the deflate stream makes no progress")
    except zlib.error as err:
        raise BadInputError(f"corrupt deflated DICOM: {err}") from err
    return total


def inflate_prefix(fp: BinaryIO, nbytes: int) -> bytes:
    """At most the first ``nbytes`` of the raw deflate stream at ``fp``'s position, inflated (less
    when the stream is shorter, truncated or corrupt: what could be inflated)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    try:
        while len(out) < nbytes and not inflater.eof:
            chunk = inflater.unconsumed_tail or fp.read(1 << 16)
            piece = inflater.decompress(chunk, nbytes - len(out))
            if not chunk and not piece:
                break
            if chunk and not piece and len(inflater.unconsumed_tail) == len(chunk):
                break
            out += piece
    except zlib.error:
        pass
    return bytes(out)


def dataset_start(fp: BinaryIO) -> tuple[str | None, int]:
    """(Transfer Syntax UID, offset of the dataset after the file meta) of a DICOM file; (None, 0)
    where the file meta cannot be read here (the reader says later what is wrong)."""
    from pydicom.filereader import _read_file_meta_info

    try:
        fp.seek(0)
        head = fp.read(132)
        fp.seek(132 if head[128:132] == b"DICM" else 0)
        meta = _read_file_meta_info(fp)
        ts = meta.get("TransferSyntaxUID")
        return (str(ts).strip("\0 ") if ts else None), fp.tell()
    except Exception:  # noqa: BLE001 - not parseable here
        return None, 0


def guard_deflate(fp: BinaryIO, limits: DecodeLimits) -> None:
    """Refuse a Deflated dataset that inflates beyond the file-size limit, is corrupt or does not
    end; anything else is left to the reader. ``fp`` is rewound."""
    ts, start = dataset_start(fp)
    if ts == DEFLATED:
        fp.seek(start)
        inflated_size(fp, limits.max_file_bytes)
    fp.seek(0)
