"""The DICOM listener: a storage SCP (and C-ECHO) feeding the same durable queue as the hot folder.

Each received instance is streamed as it arrives (file meta + the encoded dataset, no re-encoding,
never whole in memory) into a temporary file in ``data/incoming`` (:mod:`.guard`), parsed from there
without loading its pixels, fsynced, and renamed to its sha256 by
:func:`hipcad.appliance.worker.intake.admit`; only then is Success (0x0000) returned. No path is ever
built from a DICOM value (pynetdicom issue #823). Failure statuses: 0xA700 Out of Resources (larger
than ``dicom_max_object_mb``, the disk guard is tripped, the disk or the database is full), 0xA900
Data Set Does Not Match SOP Class (another SOP class than negotiated, no SOP Instance UID, an image
without pixels), 0xC000 Cannot Understand (the dataset does not parse).

Who may talk to it (:mod:`.server`): hosts on ``dicom_allowed_hosts`` only (others are closed at TCP
accept, before any thread or byte of DICOM), within the connection limits and the handshake
deadline; then the called AE title must be ours and the calling AE title on ``dicom_allowed_aets``
(when set), else an A-ASSOCIATE-RJ (rejected-permanent, service-user; reason "called/calling AE title
not recognised", or "no reason given" for a host, as PS3.8 has no reason for addresses); with
``dicom_tls`` the peer must present a certificate from ``dicom_tls_ca``. Every refusal is logged with
the address, AE titles and reason, never a data set value.
"""

from __future__ import annotations

import ipaddress
import logging
import sqlite3
import threading
import time

from hipcad.appliance.config import Config
from hipcad.appliance.dicom.results import MANUFACTURER
from hipcad.appliance.logs import printable
from hipcad.appliance.storage.files import DataDir
from hipcad.appliance.storage.store import Store
from hipcad.appliance.worker.intake import admit, free_mb
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
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # permanent, service-user, called AE title not recognised
REJECT_BUSY = (0x02, 0x03, 0x02)  # transient, service-provider (presentation), local-limit-exceeded
OPEN_TO_ALL = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))

def parse_address(host: str):
    """A peer's address (an IPv4-mapped IPv6 address as IPv4, a zone dropped), or None."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return address.ipv4_mapped if address.version == 6 and address.ipv4_mapped else address


def normalise_host(host: str) -> str:
    address = parse_address(host)
    return host if address is None else str(address)


def accepted_transfer_syntaxes() -> list[str]:
    usable = []
    for uid in TRANSFER_SYNTAXES:
        status = transfer_syntaxes.status_for(uid)
        if status is not None and status.available:
            usable.append(uid)
    return usable


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
        self.limits = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self.error: str | None = None
        self._lock = threading.Lock()
        self.stats = {"received": 0, "duplicates": 0, "ignored_own_results": 0, "refused": 0, "rejected_associations": 0, "echoes": 0,
                      "last_received_at": None, "last_refused": None, "last_rejected": None}
        self.transfer_syntaxes = accepted_transfer_syntaxes()

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind and serve in pynetdicom's threads. Raises OSError when the port cannot be bound,
        ConfigError when the TLS files cannot be loaded."""
        from pynetdicom import AE, evt

        from hipcad.appliance.dicom import guard
        from hipcad.appliance.dicom.server import Limits, Server

        guard.install()
        lim = self.limits = Limits.from_config(self.config)
        tls_context = None
        if self.config.dicom_tls:
            from hipcad.appliance.dicom import tls

            tls_context = tls.server_context(self.config)
        ae = AE(ae_title=self.config.dicom_ae_title)
        ae.require_called_aet = True  # backstop: _on_requested checks (and logs) first
        # pynetdicom counts association threads, broken ones that wind down for up to acse_timeout
        # included; the server's own limits (connections, half-open, threads) come first
        ae.maximum_associations = lim.max_threads
        ae.network_timeout = lim.network_timeout
        ae.acse_timeout = lim.acse_timeout
        ae.dimse_timeout = lim.dimse_timeout
        ae.connection_timeout = lim.handshake_s
        ae.maximum_pdu_size = lim.max_pdu
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, self.transfer_syntaxes)
        ae.add_supported_context(VERIFICATION, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_C_ECHO, self._on_echo), (evt.EVT_ABORTED, self._on_aborted),
                    (evt.EVT_CONN_CLOSE, lambda event: self.server and self.server.connection_closed(event.assoc))]
        try:
            server = ae.make_server((self.config.dicom_bind, self.config.dicom_port), evt_handlers=handlers,
                                    server_class=Server, listener=self, limits=lim, tls_context=tls_context)
        except OSError as err:
            self.error = f"cannot listen on {self.config.dicom_bind}:{self.config.dicom_port}: {err.strerror or err}"
            raise
        ae._servers.append(server)  # as start_server does: server.shutdown() removes it again
        self.server = server
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        self._thread.start()
        self.port = server.server_address[1]
        self.error = None
        log.info("DICOM listener %s on %s:%d (%s; %d transfer syntaxes; max PDU %d bytes, max object %d MiB, "
                 "%d associations, %d connections, %d half-open per host, %.0f s to associate)",
                 self.config.dicom_ae_title, self.config.dicom_bind, self.port, "TLS" if tls_context else "no TLS",
                 len(self.transfer_syntaxes), lim.max_pdu, lim.max_object_bytes >> 20, lim.max_associations,
                 lim.max_connections, lim.max_pending_per_host, lim.handshake_s)
        if any(net in OPEN_TO_ALL for net in self.allowed_hosts):
            log.warning("DICOM listener OPEN TO EVERY ADDRESS: dicom_allowed_hosts lists %s; any host that can reach "
                        "port %d may send images%s", ", ".join(str(n) for n in self.allowed_hosts if n in OPEN_TO_ALL),
                        self.port, "" if self.allowed_aets else " under any calling AE title")

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
        if self.server is not None:
            stats["connections"] = self.server.stats()
        return {"enabled": True, "up": self.alive(), "ae_title": self.config.dicom_ae_title, "tls": self.config.dicom_tls,
                "bind": self.config.dicom_bind, "port": self.port or self.config.dicom_port, "error": self.error,
                **stats}

    def _count(self, key: str, **last) -> None:
        with self._lock:
            self.stats[key] += 1
            self.stats.update(last)

    def count_rejection(self, host: str, calling: str, reason: str) -> None:
        self._count("rejected_associations", last_rejected={"at": time.time(), "calling_ae": printable(calling),
                                                            "host": printable(host), "reason": reason})

    # -- association control -------------------------------------------------------------------------
    def _on_requested(self, event) -> None:
        from hipcad.appliance.dicom.guard import refusal

        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        host = normalise_host(assoc.requestor.address)
        why, reason = None, None
        if not self.host_allowed(host):  # already closed at accept: defence in depth
            why, reason = "host address not allowed", REJECT_HOST
        elif called != self.config.dicom_ae_title:
            why, reason = "called AE title is not ours", REJECT_CALLED_AE
        elif self.allowed_aets and calling not in self.allowed_aets:
            why, reason = "calling AE title not recognised", REJECT_CALLING_AE
        elif self.server is not None and self.server.established_count(exclude=assoc) >= self.limits.max_associations:
            why, reason = f"{self.limits.max_associations} associations already open", REJECT_BUSY
        if reason is None:
            return
        refusal("rejected", host, f"association (calling AE {printable(calling, 16)}, called AE {printable(called, 16)}) "
                                  f"rejected: {why}", key=why)
        self.count_rejection(host, calling, why)
        # pynetdicom skips its own negotiation once the association is rejected; kill() waits until
        # the A-ASSOCIATE-RJ has gone out (as pynetdicom's ACSE does after its own rejections)
        assoc.acse.send_reject(*reason)
        assoc.kill()

    def _on_aborted(self, event) -> None:
        from hipcad.appliance.dicom.guard import refusal

        refusal("aborted", normalise_host(event.assoc.requestor.address), "association aborted")

    def host_allowed(self, host: str) -> bool:
        address = parse_address(host)
        return address is not None and any(address in network for network in self.allowed_hosts)

    def refuse_store_reason(self, max_object_bytes: int) -> str | None:
        """Why no C-STORE may be received now (disk guard), else None."""
        need = self.config.min_free_mb + (max_object_bytes >> 20)
        if not self.accepting() or free_mb(self.data.root) < need:
            return f"less than {need} MB free in the data folder (min_free_mb + dicom_max_object_mb)"
        return None

    def _on_echo(self, event) -> int:
        self._count("echoes")
        return SUCCESS

    # -- C-STORE --------------------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        spool = getattr(event.request, "_dataset_file", None)
        try:
            status = self._store(event, spool)
        except Exception:  # noqa: BLE001 - never let a handler error reach the association
            log.exception("C-STORE handler failed")
            status = OUT_OF_RESOURCES
        if spool is not None and hasattr(spool, "cleanup"):
            spool.cleanup()  # unless queued
        if status != SUCCESS:
            self._count("refused", last_refused={"at": time.time(), "status": f"0x{status:04X}"})
        return status

    def _store(self, event, spool) -> int:
        from hipcad.appliance.dicom.guard import SpoolFile

        if not isinstance(spool, SpoolFile):
            log.error("C-STORE refused: the data set was not streamed to disk (guards not installed) (Out of Resources)")
            return OUT_OF_RESOURCES
        if spool.refused is not None:
            log.warning("C-STORE refused: %s (Out of Resources)", spool.refused)
            return OUT_OF_RESOURCES
        try:
            spool.finish()
        except OSError as err:
            log.error("C-STORE refused: cannot write the spool (%s) (Out of Resources)", err.strerror or err)
            return OUT_OF_RESOURCES
        sop_uid, status, own = self._check(spool, event)
        if status != SUCCESS:
            return status
        if own:  # our own result, routed back by a PACS: accepted, never read as a radiograph (no loop)
            log.info("C-STORE of a hipcad result received: accepted and ignored")
            self._count("ignored_own_results", last_received_at=time.time())
            return SUCCESS
        calling = printable(str(event.assoc.requestor.ae_title).strip(), 16)
        store = None
        try:
            store = Store(self.config.db_path)
            item_id = admit(spool.path, spool.sha.hexdigest(), spool.size, sop_uid, f"C-STORE from {calling}", store, self.data)
            spool.admitted = True
        except (OSError, sqlite3.Error) as err:  # no space, "database or disk is full", locked past the timeout...
            log.error("C-STORE refused: cannot queue it (%s) (Out of Resources)", type(err).__name__)
            return OUT_OF_RESOURCES
        finally:
            if store is not None:
                store.close()
        if item_id is None:
            self._count("duplicates", last_received_at=time.time())
        else:
            self._count("received", last_received_at=time.time())
            self.on_queued()
        return SUCCESS

    def _check(self, spool, event) -> tuple[str | None, int, bool]:
        """Parse the spooled data set (values over 1 MiB left on disk) and check it against the
        negotiated SOP class. pydicom reads a cut-off value without complaint: a top-level element
        whose declared length runs past what arrived means the data set is cut short or not DICOM."""
        import pydicom

        try:
            ds = pydicom.dcmread(spool.path, defer_size=1 << 20)
            for tag in ds.keys():
                raw = ds.get_item(tag, keep_deferred=True)
                length, value = getattr(raw, "length", None), getattr(raw, "value", None)
                if length is None or length == 0xFFFFFFFF:
                    continue
                tell = getattr(raw, "value_tell", None)
                if (isinstance(value, (bytes, bytearray)) and len(value) < length) or \
                        (value is None and tell is not None and tell + length > spool.size):
                    raise ValueError("an element is longer than the data that came")
            sop_class = str(ds.get("SOPClassUID", "") or "").strip()
            sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip().strip("\0")
            has_pixels = "PixelData" in ds and int(ds.get("Rows", 0) or 0) > 0 and int(ds.get("Columns", 0) or 0) > 0
            own = sop_class == SECONDARY_CAPTURE and str(ds.get("Manufacturer", "")) == MANUFACTURER
        except Exception as err:  # noqa: BLE001 - whatever pydicom says, we cannot understand it
            log.warning("C-STORE refused: the dataset does not parse (%s) (Cannot Understand)", type(err).__name__)
            return None, CANNOT_UNDERSTAND, False
        negotiated = str(event.context.abstract_syntax)
        affected = str(event.request.AffectedSOPInstanceUID or "").strip()
        if sop_class != negotiated or not sop_uid or len(sop_uid) > 64 or (affected and sop_uid != affected) \
                or not has_pixels:
            log.warning("C-STORE refused: the dataset does not match its SOP class (Data Set Does Not Match SOP Class)")
            return None, DATASET_MISMATCH, False
        return sop_uid, SUCCESS, own
