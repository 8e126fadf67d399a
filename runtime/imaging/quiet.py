"""Keeping pydicom and the codec plugins quiet while a file is decoded: their log records and
warnings quote element values read from the file (UIDs, names...), which must never reach a log.

:func:`quiet_decoding` withholds them for the calling thread; :func:`safe_reason` turns a library
exception into a one-line message that is safe to show and to log.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator

import numpy as np

_state = threading.local()
# Loggers of pydicom and the codec plugins (filters on a logger do not see its children).
_QUIET_LOGGERS = (
    "pydicom",
    "pydicom.pixels.decoders.base",
    "pydicom.pixels.utils",
    "pydicom.pixels.processing",
    "pylibjpeg",
    "pylibjpeg.utils",
    "openjpeg",
    "openjpeg.utils",
    "jpeg_ls",
    "jpeg_ls._CharLS",
    "libjpeg",
    "rle",
    "py.warnings",
)


class _DropWhileDecoding(logging.Filter):
    """Drops records logged by this thread while it is inside :func:`decode_dicom`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(_state, "depth", 0):
            _state.dropped = getattr(_state, "dropped", 0) + 1
            return False
        return True


_FILTER = _DropWhileDecoding()
for _name in _QUIET_LOGGERS:
    _logger = logging.getLogger(_name)
    if not any(isinstance(f, _DropWhileDecoding) for f in _logger.filters):
        _logger.addFilter(_FILTER)


# Python warnings filters are process-wide (before 3.14): one "ignore" filter is held for as
# long as any thread decodes (reference-counted, so that overlapping decodes in several threads
# cannot leave it installed or remove it early). Other threads' warnings are hidden meanwhile.
_warnings_lock = threading.Lock()
_warnings_users = 0
_warnings_cm: warnings.catch_warnings | None = None


def _warnings_off() -> None:
    global _warnings_users, _warnings_cm
    with _warnings_lock:
        if _warnings_users == 0:
            _warnings_cm = warnings.catch_warnings()
            _warnings_cm.__enter__()
            warnings.simplefilter("ignore")
        _warnings_users += 1


def _warnings_on() -> None:
    global _warnings_users, _warnings_cm
    with _warnings_lock:
        _warnings_users -= 1
        if _warnings_users == 0 and _warnings_cm is not None:
            _warnings_cm.__exit__(None, None, None)
            _warnings_cm = None


@contextmanager
def quiet_decoding() -> Iterator[None]:
    """Withhold pydicom's / the plugins' log records (this thread) and Python warnings."""
    if not getattr(_state, "depth", 0):
        _state.dropped = 0
    _state.depth = getattr(_state, "depth", 0) + 1
    _warnings_off()
    try:
        with np.errstate(all="ignore"):
            yield
    finally:
        _warnings_on()
        _state.depth -= 1


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"-?[0-9][0-9.]*")
_ALL_PLUGINS_FAILED = "Unable to decode as exceptions were raised by all available plugins"


def safe_reason(err: BaseException, limit: int = 240) -> str:
    """A one-line description of a library exception, safe to show and to log.

    Never a traceback; quoted text (where libraries quote element values read from the
    file) is replaced by '...' unless it is a number; only printable characters are kept.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(_ALL_PLUGINS_FAILED)]
    text = "; ".join(lines) if lines else type(err).__name__
    text = _QUOTED.sub(lambda m: m.group(0) if _NUMBER.fullmatch(m.group(0)[1:-1]) else "'...'", text)
    text = "".join(ch for ch in text if ch.isprintable())
    return text if len(text) <= limit else text[: limit - 3] + "..."




def withheld_messages() -> int:
    """How many library log records the calling thread's last :func:`quiet_decoding` withheld."""
    return getattr(_state, "dropped", 0)
