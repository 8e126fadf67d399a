"""The DICOM listener: a storage SCP (and C-ECHO) feeding the same durable queue as the hot folder.

Each received instance is written as it arrived (file meta + the encoded dataset, no re-encoding)
to a temporary file in ``data/incoming``, fsynced, and renamed to its sha256 by
:func:`hipcad.appliance.worker.intake.admit`; only then is Success (0x0000) returned. No path is ever
built from a DICOM value (pynetdicom issue #823). Failure statuses: 0xA700 Out of Resources (the
disk guard is tripped, the disk or the database is full), 0xA900 Data Set Does Not Match SOP Class
(another SOP class than negotiated, no SOP Instance UID, an image without pixels), 0xC000 Cannot
Understand (the dataset does not parse).

Associations are accepted only from the configured calling AE titles and host addresses; others
get an A-ASSOCIATE-RJ (rejected-permanent, service-user; reason "calling AE title not recognised"
or, for a host, "no reason given", as PS3.8 has no reason for addresses).
"""

from __future__ import annotations

import errno
import hashlib
import io
import ipaddress
import logging
import os
import re
import sqlite3
import threading
import time
import uuid

from hipcad.appliance.config import Config
from hipcad.appliance.dicom.results import MANUFACTURER
from hipcad.appliance.storage.files import DataDir, remove_quietly
from hipcad.appliance.storage.store import Store
from hipcad.appliance.worker.intake import admit, free_mb
from hipcad.runtime.durable import TMP_PREFIX
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.imaging import transfer_syntaxes

log = logging.getLogger("hipcad.dicom")

VERIFICATION = "1.2.840.10008.1.1"
STORAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
# offered in this order of preference; only those hipcad can decode here are accepted
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless Process 14
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000

# A-ASSOCIATE-RJ: (result, source, reason)
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # permanent, service-user, calling AE title not recognised
REJECT_HOST = (0x01, 0x01, 0x01)  # permanent, service-user, no reason given

_UNSAFE = re.compile(r"[^\x20-\x7e]")


def printable(text: str, limit: int = 64) -> str:
    """A peer-supplied string (AE title) made safe for a log line or the kiosk."""
    return _UNSAFE.sub("?", str(text))[:limit]


def accepted_transfer_syntaxes() -> list[str]:
    usable = []
    for uid in TRANSFER_SYNTAXES:
        status = transfer_syntaxes.status_for(uid)
        if status is not None and status.available:
            usable.append(uid)
    return usable


def _truncated(ds) -> bool:
    """pydicom reads a cut-off value without complaint: a top-level element whose declared length
    is more than what arrived means the dataset is cut short or not DICOM at all."""
    for tag in ds.keys():
        raw = ds.get_item(tag)
        length, value = getattr(raw, "length", None), getattr(raw, "value", None)
        if length is not None and length != 0xFFFFFFFF and isinstance(value, (bytes, bytearray)) and len(value) < length:
            return True
    return False


class DiskFull(HipcadError):
    pass


class Listener:
    """The storage SCP. ``accepting()`` says whether the disk guard lets files in; ``on_queued()``
    is called after each newly queued item (to wake the inference thread)."""

    def __init__(self, config: Config, data: DataDir, accepting=lambda: True, on_queued=lambda: None) -> None:
        self.config = config
        self.data = data
        self.accepting = accepting
        self.on_queued = on_queued
        self.allowed_aets = {t.strip() for t in config.dicom_allowed_aets}
        self.allowed_hosts = [ipaddress.ip_network(h, strict=False) for h in config.dicom_allowed_hosts]
        self.server = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self.stats = {"received": 0, "duplicates": 0, "ignored_own_results": 0, "refused": 0, "rejected_associations": 0, "echoes": 0,
                      "last_received_at": None, "last_refused": None, "last_rejected": None}
        self.transfer_syntaxes = accepted_transfer_syntaxes()

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind and serve in pynetdicom's threads. Raises OSError when the port cannot be bound."""
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.config.dicom_ae_title)
        ae.require_called_aet = False  # modalities get the called AE title wrong often; the caller is checked
        ae.maximum_associations = 16
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.maximum_pdu_size = 0  # no limit on what we receive
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, self.transfer_syntaxes)
        ae.add_supported_context(VERIFICATION, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_C_ECHO, self._on_echo)]
        try:
            server = ae.make_server((self.config.dicom_bind, self.config.dicom_port), evt_handlers=handlers)
        except OSError as err:
            self.error = f"cannot listen on {self.config.dicom_bind}:{self.config.dicom_port}: {err.strerror or err}"
            raise
        ae._servers.append(server)  # as start_server does: server.shutdown() removes it again
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        self._thread.start()
        self.port = server.server_address[1]
        self.error = None
        log.info("DICOM listener %s on %s:%d (%d transfer syntaxes)", self.config.dicom_ae_title,
                 self.config.dicom_bind, self.port, len(self.transfer_syntaxes))

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()  # also closes the listening socket
            self._thread.join(10)
            self.server = None

    def alive(self) -> bool:
        return self.server is not None and self._thread is not None and self._thread.is_alive()

    def status(self) -> dict:
        with self._lock:
            stats = dict(self.stats)
        return {"enabled": True, "up": self.alive(), "ae_title": self.config.dicom_ae_title,
                "bind": self.config.dicom_bind, "port": self.port or self.config.dicom_port, "error": self.error,
                **stats}

    def _count(self, key: str, **last) -> None:
        with self._lock:
            self.stats[key] += 1
            self.stats.update(last)

    # -- association control -------------------------------------------------------------------------
    def _on_requested(self, event) -> None:
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        host = assoc.requestor.address
        why, reason = None, None
        if self.allowed_aets and calling not in self.allowed_aets:
            why, reason = "calling AE title not recognised", REJECT_CALLING_AE
        elif self.allowed_hosts and not self._host_allowed(host):
            why, reason = "host address not allowed", REJECT_HOST
        if reason is None:
            return
        log.warning("association from %s (calling AE %s) rejected: %s", host, printable(calling), why)
        self._count("rejected_associations", last_rejected={"at": time.time(), "calling_ae": printable(calling),
                                                            "host": printable(host), "reason": why})
        # pynetdicom skips its own negotiation once the association is rejected; kill() waits until
        # the A-ASSOCIATE-RJ has gone out (as pynetdicom's ACSE does after its own rejections)
        assoc.acse.send_reject(*reason)
        assoc.kill()

    def _host_allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.allowed_hosts)

    def _on_echo(self, event) -> int:
        self._count("echoes")
        return SUCCESS

    # -- C-STORE --------------------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        try:
            status = self._store(event)
        except Exception:  # noqa: BLE001 - never let a handler error reach the association
            log.exception("C-STORE handler failed")
            status = OUT_OF_RESOURCES
        if status != SUCCESS:
            self._count("refused", last_refused={"at": time.time(), "status": f"0x{status:04X}"})
        return status

    def _store(self, event) -> int:
        if not self.accepting() or free_mb(self.data.root) < self.config.min_free_mb:
            log.error("C-STORE refused: less than %d MB free in the data folder (Out of Resources)",
                      self.config.min_free_mb)
            return OUT_OF_RESOURCES
        try:
            encoded = event.encoded_dataset(include_meta=True)
        except Exception as err:  # noqa: BLE001
            log.warning("C-STORE refused: the dataset cannot be read (%s)", type(err).__name__)
            return CANNOT_UNDERSTAND
        sop_uid, status, own = self._check(encoded, event)
        if status != SUCCESS:
            return status
        if own:  # our own result, routed back by a PACS: accepted, never read as a radiograph (no loop)
            log.info("C-STORE of a hipcad result received: accepted and ignored")
            self._count("ignored_own_results", last_received_at=time.time())
            return SUCCESS
        calling = printable(str(event.assoc.requestor.ae_title).strip(), 16)
        try:
            item_id = self._admit(encoded, sop_uid, f"C-STORE from {calling}")
        except DiskFull as err:
            log.error("C-STORE refused: %s (Out of Resources)", err)
            return OUT_OF_RESOURCES
        if item_id is None:
            self._count("duplicates", last_received_at=time.time())
        else:
            self._count("received", last_received_at=time.time())
            self.on_queued()
        return SUCCESS

    def _check(self, encoded: bytes, event) -> tuple[str | None, int, bool]:
        """Parse the dataset (pixels not decoded) and check it against the negotiated SOP class."""
        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(encoded))
            if _truncated(ds):
                raise ValueError("an element is longer than the data that came")
            sop_class = str(ds.get("SOPClassUID", "") or "").strip()
            sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip().strip("\0")
            has_pixels = "PixelData" in ds and int(ds.get("Rows", 0) or 0) > 0 and int(ds.get("Columns", 0) or 0) > 0
        except Exception as err:  # noqa: BLE001 - whatever pydicom says, we cannot understand it
            log.warning("C-STORE refused: the dataset does not parse (%s) (Cannot Understand)", type(err).__name__)
            return None, CANNOT_UNDERSTAND, False
        negotiated = str(event.context.abstract_syntax)
        affected = str(event.request.AffectedSOPInstanceUID or "").strip()
        if sop_class != negotiated or not sop_uid or len(sop_uid) > 64 or (affected and sop_uid != affected) \
                or not has_pixels:
            log.warning("C-STORE refused: the dataset does not match its SOP class (Data Set Does Not Match SOP Class)")
            return None, DATASET_MISMATCH, False
        own = sop_class == SECONDARY_CAPTURE and str(ds.get("Manufacturer", "")) == MANUFACTURER
        return sop_uid, SUCCESS, own

    def _admit(self, encoded: bytes, sop_uid: str, name: str) -> int | None:
        """Write, fsync, then hand over to :func:`admit` (rename to the sha256, INSERT)."""
        tmp = self.data.incoming / f"{TMP_PREFIX}scp-{uuid.uuid4().hex}"
        sha = hashlib.sha256(encoded).hexdigest()
        store = None
        try:
            with open(tmp, "wb") as fh:
                fh.write(encoded)
                fh.flush()
                os.fsync(fh.fileno())
            store = Store(self.config.db_path)
            return admit(tmp, sha, len(encoded), sop_uid, name, store, self.data)
        except OSError as err:
            remove_quietly(tmp)
            if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise DiskFull(f"no space left in {self.data.root}") from err
            raise DiskFull(f"cannot write the spool: {err.strerror or err}") from err
        except sqlite3.Error as err:  # "database or disk is full", locked past the timeout...
            remove_quietly(tmp)
            raise DiskFull(f"cannot record the item: {err}") from err
        finally:
            if store is not None:
                store.close()
