"""Logging for the box's services (worker, kiosk): the runtime's one set-up with timestamps, plus
what a service facing the network needs: a misbehaving DICOM peer is one short line, a dying
library thread is one line, and pydicom's warnings (which quote values) never reach the log."""

from __future__ import annotations

import logging
import re
import threading
import warnings

from hipcad.runtime.logs import setup_logging

log = logging.getLogger("hipcad")
_UNSAFE = re.compile(r"[^\x20-\x7e]")


def printable(text, limit: int = 64) -> str:
    """A peer-supplied string (AE title, address, user name) made safe for a log line or the kiosk."""
    return _UNSAFE.sub("?", str(text))[:limit]


def setup_service_logging(level: str | int) -> None:
    setup_logging(level, service=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(OneLineFromPeers())
    threading.excepthook = _thread_died
    quiet_dicom_warnings()


class OneLineFromPeers(logging.Filter):
    """What pynetdicom says about a misbehaving peer (junk on the port, a reset connection) in one
    short line: no traceback, no dump of the bytes that came."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pynetdicom"):
            message = record.getMessage().strip().splitlines()
            if record.exc_info and record.exc_info[1] is not None:
                message = [*message[:1], f"{type(record.exc_info[1]).__name__}"]
            text = ": ".join(m for m in message[:2] if m) or "(no message)"
            record.msg, record.args, record.exc_info, record.exc_text = text[:200], None, None, None
        return True


def _thread_died(args) -> None:
    """A thread that is not ours (pynetdicom's, one per association) died: one line, no traceback."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    log.error("thread %s stopped: %s", name, args.exc_type.__name__)


def quiet_dicom_warnings() -> None:
    """pydicom's warnings about invalid values quote the values (a patient name, a hostile UID):
    they never reach the log."""
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
