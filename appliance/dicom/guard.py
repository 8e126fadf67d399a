"""Guards pynetdicom lacks, put into it: bounded PDUs and C-STORE data sets streamed to a capped file.

pynetdicom 3.0.4 reads whatever PDU length a peer declares into memory, whatever Maximum Length
Receive we advertised (``DULServiceProvider._read_pdu_data``; upstream issue #1086), and keeps a
received data set in memory unless ``_config.STORE_RECV_CHUNKED_DATASET`` is set, in which case it
writes it, without a size limit, to a ``NamedTemporaryFile`` in the default temp folder that is left
behind when the association dies mid-transfer. :func:`install` replaces both, process-wide:

- ``_read_pdu_data`` -> :func:`_bounded_read_pdu_data`: a P-DATA-TF longer than our advertised
  Maximum Length Receive, an A-ASSOCIATE-RQ/AC over 64 KiB, a fixed-size PDU of the wrong length or
  an unknown PDU type -> A-ABORT and close, logged; every recv runs under a timeout.
- ``dimse_messages.NamedTemporaryFile`` -> :func:`_spool_file`: for an association of our listener a
  :class:`SpoolFile` in ``data/incoming`` (the spool's file system, so queueing it is a rename), hashed
  while written; past the size cap its bytes are dropped and the rest drained (answer 0xA700 Out of
  Resources) or, past the drain allowance, the association is aborted. Files of dead associations are
  deleted by the server's reaper (:mod:`.server`).

These replace private code, so hipcad pins pynetdicom to the version they were written for
(``PYNETDICOM_VERSION``) and :func:`install` refuses any other; the attack tests in
``tests/appliance/dicom/test_dicom_attacks.py`` run them in CI.

Refusals are logged with the peer's address, AE titles, sizes and reasons, never data set content,
at most one line per (kind, reason, host) per 10 s (then a count), so a flood cannot fill the journal.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import tempfile
import threading
import time
from pathlib import Path

from hipcad.appliance.logs import printable
from hipcad.appliance.storage.files import remove_quietly
from hipcad.runtime.durable import TMP_PREFIX
from hipcad.runtime.errors import HipcadError

log = logging.getLogger("hipcad.dicom")

PYNETDICOM_VERSION = "3.0.4"
MAX_ASSOCIATE_PDU = 64 * 1024  # A-ASSOCIATE-RQ/AC (dcmtk's getscu sends ~17 KiB)
DEFAULT_MAX_PDU = 256 * 1024  # for associations that are not our listener's (the forwarder's)
DEFAULT_NETWORK_TIMEOUT = 30.0
_FIXED_PDU = {0x03: 4, 0x05: 4, 0x06: 4, 0x07: 4}  # A-ASSOCIATE-RJ, A-RELEASE-RQ/RP, A-ABORT


class GuardError(HipcadError):
    """The installed pynetdicom is not the version the guards were written for."""


def _server(dul):
    """Our listener's server for an association it accepted, else None."""
    server = getattr(getattr(dul, "assoc", None), "_server", None)
    return server if getattr(server, "is_hipcad_server", False) else None


def _peer(dul) -> str:
    try:
        assoc = dul.assoc
        return printable(assoc.requestor.address if assoc.is_acceptor else assoc.acceptor.address, 46)
    except Exception:  # noqa: BLE001 - only for a log line
        return "?"


def _pdu_limit(dul, pdu_type: int) -> int:
    if pdu_type in _FIXED_PDU:
        return _FIXED_PDU[pdu_type]
    if pdu_type in (0x01, 0x02):
        return MAX_ASSOCIATE_PDU
    local = dul.assoc.acceptor if dul.assoc.is_acceptor else dul.assoc.requestor
    return int(local.maximum_length or 0) or DEFAULT_MAX_PDU  # 0 ("no limit") is never honoured


def abort_and_close(dul, reason: int) -> None:
    """A-ABORT (source: service provider) straight onto the wire, then close: Evt17 ends the
    association; whatever the peer still sends is never read."""
    from pynetdicom.pdu import A_ABORT_RQ

    sock = dul.socket
    try:
        pdu = A_ABORT_RQ()
        pdu.source, pdu.reason_diagnostic = 0x02, reason
        sock.send(pdu.encode())
    except Exception:  # noqa: BLE001 - best effort: the peer may be gone
        pass
    dul.assoc.is_aborted = True
    sock.close()


def _bounded_read_pdu_data(self) -> None:
    """pynetdicom's ``DULServiceProvider._read_pdu_data`` with limits (same events, same queues)."""
    sock = self.socket
    raw = getattr(sock, "socket", None)
    if raw is not None and raw.gettimeout() is None:  # requestor sockets run without one after connect()
        raw.settimeout(self.assoc.network_timeout or DEFAULT_NETWORK_TIMEOUT)
    try:
        header = sock.recv(6)
    except (OSError, TimeoutError):
        self.event_queue.put("Evt17")
        return
    if len(header) != 6:
        self.event_queue.put("Evt17")
        return
    pdu_type, _, length = struct.unpack(">BBL", header)
    if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
        refusal("bad-pdu", _peer(self), f"unknown PDU type 0x{pdu_type:02X}: association aborted")
        abort_and_close(self, 0x01)  # unrecognized-PDU
        return
    limit = _pdu_limit(self, pdu_type)
    if length > limit or (pdu_type in _FIXED_PDU and length != limit):
        refusal("pdu-too-long", _peer(self), f"PDU type 0x{pdu_type:02X} declares {length} bytes, limit {limit}: "
                                             "association aborted", key=f"{pdu_type:02X}")
        abort_and_close(self, 0x06)  # invalid-PDU-parameter value
        return
    try:
        body = sock.recv(length)
    except (OSError, TimeoutError):
        refusal("pdu-stalled", _peer(self), "PDU not completed in time (or the connection was lost): closed")
        self.event_queue.put("Evt17")
        return
    if len(body) != length:
        self.event_queue.put("Evt17")
        return
    try:
        pdu, event = self._decode_pdu(header + body)
    except Exception:  # noqa: BLE001 - whatever the peer sent, it is not a PDU
        refusal("bad-pdu", _peer(self), "PDU does not decode: association aborted")
        self.event_queue.put("Evt19")
        return
    self.event_queue.put(event)
    self._recv_pdu.put(pdu)


class SpoolFile:
    """What pynetdicom's ``decode_msg`` writes a received C-STORE into (it needs ``write``,
    ``file.flush``, ``close`` and ``name``). ``refused`` is None, or why it is answered 0xA700."""

    def __init__(self, directory: Path, conn, max_bytes: int, drain_bytes: int, refused: str | None = None) -> None:
        self.conn = conn
        self.max_bytes, self.drain_bytes = max_bytes, drain_bytes
        self.refused = refused
        self.size = 0
        self.sha = hashlib.sha256()
        self.admitted = False
        self.aborted = False
        self.file = self  # decode_msg calls ._data_set_file.file.flush()
        self._fh = None
        if refused is None:
            fd, self.name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}scp-", suffix=".dcm", dir=directory)
            self._fh = os.fdopen(fd, "wb")
        else:
            self.name = str(directory / f"{TMP_PREFIX}scp-refused")
        if conn is not None:
            conn.spools.append(self)

    @property
    def path(self) -> Path:
        return Path(self.name)

    @property
    def host(self) -> str:
        return self.conn.host if self.conn is not None else "?"

    def write(self, data) -> int:
        n = len(data)
        self.size += n
        if self.refused is None and self.size > self.max_bytes:
            self.refused = f"larger than {self.max_bytes >> 20} MiB (dicom_max_object_mb)"
            self._discard()
            refusal("too-large", self.host, f"C-STORE data set over {self.max_bytes} bytes: the rest is discarded, "
                                            "answering Out of Resources (0xA700)")
        if self.refused is not None:
            if not self.aborted and self.size > self.max_bytes + self.drain_bytes:
                self.aborted = True
                refusal("too-large", self.host, "C-STORE still sending past the drain allowance: association aborted",
                        key="abort")
                dul = threading.current_thread()
                if hasattr(dul, "event_queue") and hasattr(dul, "assoc"):  # the association's DUL thread
                    abort_and_close(dul, 0x00)
            return n
        self._fh.write(data)
        self.sha.update(data)
        return n

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def finish(self) -> None:
        """fsync and close, before the file is queued (renamed)."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _discard(self) -> None:
        self.close()
        remove_quietly(self.path)

    def cleanup(self) -> None:
        """The object was refused, or its association is gone: whatever was not queued goes."""
        if not self.admitted:
            self._discard()


_ORIGINAL_TEMPFILE = None


def _spool_file(*args, **kwargs):
    """Replaces ``dimse_messages.NamedTemporaryFile``; runs in the association's DUL thread."""
    dul = threading.current_thread()
    server = _server(dul)
    if server is None:
        return _ORIGINAL_TEMPFILE(*args, **kwargs)
    return server.spool_for(dul.assoc)


_INSTALLED = False
_INSTALL_LOCK = threading.Lock()


def install() -> None:
    """Put the guards into pynetdicom (once per process); refuse another pynetdicom version."""
    global _INSTALLED, _ORIGINAL_TEMPFILE
    import pynetdicom
    from pynetdicom import _config
    from pynetdicom import dimse_messages as dm
    from pynetdicom.dul import DULServiceProvider

    with _INSTALL_LOCK:
        if _INSTALLED:
            return
        if pynetdicom.__version__ != PYNETDICOM_VERSION:
            raise GuardError(f"the DICOM listener's guards were written for pynetdicom {PYNETDICOM_VERSION}, "
                             f"{pynetdicom.__version__} is installed; install hipcad's pinned version")
        DULServiceProvider._read_pdu_data = _bounded_read_pdu_data
        _ORIGINAL_TEMPFILE = dm.NamedTemporaryFile
        dm.NamedTemporaryFile = _spool_file
        _config.STORE_RECV_CHUNKED_DATASET = True
        _config.LOG_REQUEST_IDENTIFIERS = False  # identifiers (C-FIND/MOVE/GET) can be patient data
        _config.LOG_RESPONSE_IDENTIFIERS = False
        _config.LOG_HANDLER_LEVEL = "none"
        logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # its ERRORs are tracebacks of closed sockets
        _INSTALLED = True


# -- rate-limited refusal log (no patient data: addresses, AE titles, sizes, reasons) --------------------
WINDOW_S = 10.0
_LOG_LOCK = threading.Lock()
_LOG_STATE: dict[tuple[str, str, str], list] = {}
COUNTERS: dict[str, int] = {}


def refusal(kind: str, host: str, message: str, key: str = "") -> None:
    now = time.monotonic()
    with _LOG_LOCK:
        COUNTERS[kind] = COUNTERS.get(kind, 0) + 1
        if len(_LOG_STATE) > 4096:  # a flood from many addresses: forget the oldest windows
            _LOG_STATE.clear()
        state = _LOG_STATE.setdefault((kind, key, host), [float("-inf"), 0])
        if now - state[0] < WINDOW_S:
            state[1] += 1
            return
        suppressed, state[0], state[1] = state[1], now, 0
    log.warning("DICOM %s from %s: %s%s", kind, host, message,
                f" ({suppressed} more like this not logged)" if suppressed else "")


def flush_suppressed() -> None:
    """Log the counts held back by :func:`refusal` once their window is over."""
    now = time.monotonic()
    with _LOG_LOCK:
        due = [(k, st[1]) for k, st in _LOG_STATE.items() if st[1] and now - st[0] >= WINDOW_S]
        for k, _ in due:
            _LOG_STATE[k][0], _LOG_STATE[k][1] = now, 0
    for (kind, _key, host), count in due:
        log.warning("DICOM %s from %s: %d more refusal(s) of this kind in the last %.0f s", kind, host, count, WINDOW_S)
