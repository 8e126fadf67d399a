"""Writing files so that a reader, a crash or a power cut never sees half of one: the one place
hipcad writes a file atomically and moves one durably."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

#: temporary files start with this; the worker removes any a crash left behind
TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None], *, mode: int = 0o644,
                 durable: bool = True) -> None:
    """Replace ``path`` with ``data`` (bytes, or a function that writes to the open file) so that
    readers see the old file or the new one, never a part.

    A temporary file in the same folder is written, then renamed over ``path`` with ``os.replace``
    (atomic on POSIX within one filesystem). With ``durable`` (the default) the file is fsync'ed
    before the rename and the folder after it, so the new file survives a power cut; bulk writers
    of reproducible files (phantoms, caches) pass ``durable=False``. On any failure the temporary
    file is removed and ``path`` is left as it was. ``mode`` applies to the new file (mkstemp
    would make it 0600; bundle and result files are read by other service users).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def move_durable(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` and make both folders durable. Within one filesystem this is one
    ``os.replace``; across filesystems (a hot folder on a network share) a fsynced copy that is
    renamed into place, then the source is removed."""
    try:
        os.replace(src, dst)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        with open(src, "rb") as fin:
            atomic_write(dst, lambda fout: shutil.copyfileobj(fin, fout, 1 << 20), mode=0o600)
        os.unlink(src)
    else:
        fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)
