"""Decoders that misbehave on purpose, for the isolation tests (``DecodePool(decoder=...)``): a file
whose first bytes name a misbehaviour gets it; anything else goes to hipcad's real decoder."""

from __future__ import annotations

import ctypes
import os
import time
import zlib

import numpy as np

from hipcad.runtime.imaging.decode import decode


class FakePanic(BaseException):
    """Like pyo3_runtime.PanicException: derives from BaseException, not Exception."""


def evil(path, limits, min_side):
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"SEGV"):
        ctypes.string_at(0)  # reads address 0
    if head.startswith(b"ABRT"):
        ctypes.CDLL(None).abort()
    if head.startswith(b"HANG"):
        while True:
            time.sleep(0.01)
    if head.startswith(b"SPIN"):
        while True:
            pass
    if head.startswith(b"ALLOC"):
        return np.ones(10 * 2**30, dtype=np.uint8)  # 10 GB
    if head.startswith(b"CALLOC"):  # careless C: malloc returns NULL under RLIMIT_AS, and is used anyway
        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        ctypes.memset(libc.malloc(ctypes.c_size_t(10 * 2**30)) or 0, 1, 10 * 2**30)
    if head.startswith(b"PANIC"):
        raise FakePanic("index out of bounds: the len is 1024 but the index is 1025")
    if head.startswith(b"EXIT"):
        os._exit(7)
    if head.startswith(b"BUG"):
        raise KeyError("not a HipcadError")
    return decode(path, limits, min_side)


def first_deflate_guard(path, limits, min_side):
    """hipcad's first deflate guard (before issue 18), which spins for ever on a stream that ends
    while input is pending; then the real decoder. The pool must stop it at its timeout."""
    from hipcad.runtime.imaging.deflate import dataset_start

    with open(path, "rb") as fp:
        _, start = dataset_start(fp)
        fp.seek(start)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        while chunk := fp.read(1 << 20):
            while chunk:
                inflater.decompress(chunk, 1 << 24)
                chunk = inflater.unconsumed_tail
    return decode(path, limits, min_side)
