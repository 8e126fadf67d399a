"""Results to PACS: store-and-forward of the outbox by C-STORE, in one thread of the worker.

The inference thread queues the two result objects of a study (their UIDs, one delivery row per
destination) in the transaction that records the result. This thread builds each object once
(``data/outbox/<id>.dcm``, written atomically), then sends what is due to each destination in
one association. A delivery is marked sent only after the peer answered Success (or a Warning,
which means stored); a destination that is down is retried with exponential back-off; a restart
resumes where the store says. A resend after a crash between the peer's answer and our commit
carries the same SOP Instance UID, so the PACS keeps one instance.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from io import BytesIO

from hipcad.appliance.config import Config, parse_destination
from hipcad.appliance.storage.files import DataDir
from hipcad.appliance.storage.store import Store
from hipcad.runtime.durable import atomic_write

log = logging.getLogger("hipcad.forward")

STORED = {0x0000, 0xB000, 0xB006, 0xB007}  # Success, and the Warnings that mean "stored"
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]  # explicit, implicit VR little endian
BATCH = 50
STATE_KEY = "pacs"


def destination_key(text: str) -> str:
    """The canonical name of a configured destination (what delivery rows carry)."""
    ae, host, port = parse_destination(text)
    return f"{ae}@[{host}]:{port}" if ":" in host else f"{ae}@{host}:{port}"


def backoff(failures: int, initial: float, maximum: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures: initial, 2x, 4x, ... up to maximum."""
    return min(maximum, initial * 2.0 ** max(0, failures - 1))


@dataclass
class Destination:
    key: str
    ae_title: str
    host: str
    port: int
    failures: int = 0
    next_try: float = 0.0
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    sent: int = 0

    def public(self) -> dict:
        return {"ae_title": self.ae_title, "host": self.host, "port": self.port, "failures": self.failures,
                "next_try_at": self.next_try if self.failures else None, "last_success_at": self.last_success_at,
                "last_error": self.last_error, "last_error_at": self.last_error_at}


class Forwarder:
    def __init__(self, config: Config, data: DataDir) -> None:
        self.config = config
        self.data = data
        self.destinations = {}
        for text in config.pacs_destinations:
            key = destination_key(text)
            ae, host, port = parse_destination(text)
            self.destinations[key] = Destination(key, ae, host, port)
        self.tls_context = None
        if config.pacs_tls:
            from hipcad.appliance.dicom import tls

            self.tls_context = tls.client_context(config)  # ConfigError now, not at the first send
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.beat = time.monotonic()
        self.fatal: str | None = None
        self._thread: threading.Thread | None = None
        self._published: dict | None = None
        self._published_at = float("-inf")

    @property
    def keys(self) -> list[str]:
        return list(self.destinations)

    def start(self) -> None:
        from hipcad.appliance.dicom import guard

        guard.install()  # bounded PDUs on our associations too: a PACS cannot make us read gigabytes
        self._thread = threading.Thread(target=self._run, name="forward", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        store = Store(self.config.db_path)
        try:
            self._restore(store)
            while not self.stop_event.is_set():
                self.beat = time.monotonic()
                self.build_pending(store)
                self.send_due(store)
                self._publish(store)
                self.wake.wait(0.5)
                self.wake.clear()
        except Exception as err:  # noqa: BLE001 - reported; the worker exits non-zero and systemd restarts it
            log.exception("the forwarding thread failed")
            self.fatal = f"{type(err).__name__}: {err}"
        finally:
            try:
                self._publish(store, force=True)
            finally:
                store.close()

    def _restore(self, store: Store) -> None:
        saved = store.get_state(STATE_KEY)
        for key, value in ((saved[0] if saved else {}).get("destinations") or {}).items():
            if key in self.destinations:
                dest = self.destinations[key]
                dest.last_success_at = value.get("last_success_at")
                dest.last_error, dest.last_error_at = value.get("last_error"), value.get("last_error_at")

    def _publish(self, store: Store, force: bool = False) -> None:
        """The destinations' state for the kiosk: written when it changed (and every 10 s)."""
        state = {"destinations": {k: d.public() for k, d in self.destinations.items()},
                 "alive": not self.stop_event.is_set()}
        now = time.monotonic()
        if force or state != self._published or now - self._published_at >= 10.0:
            store.put_state(STATE_KEY, state)
            self._published, self._published_at = state, now

    # -- building --------------------------------------------------------------------------------
    def build_pending(self, store: Store) -> int:
        from hipcad.appliance.dicom import results as dicom_results

        built = 0
        for row in store.outbox_unbuilt():
            if self.stop_event.is_set():
                break
            record = json.loads(row["result_json"]) if row["result_json"] else {}
            overlay = self.data.overlay(row["item_id"])
            uids = {"sop_instance_uid": row["sop_instance_uid"], "series_instance_uid": row["series_instance_uid"]}
            try:
                source = self._read_source(row["sha256"])
                if row["kind"] == "sc" and not overlay.is_file():
                    raise FileNotFoundError("the overlay image is no longer on disk")
                ds = dicom_results.build(row["kind"], source, overlay, record, uids)
                buffer = BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
            except Exception as err:  # noqa: BLE001 - one bad result must not stop the others
                # the message may quote a DICOM value: it goes to the store (kiosk), the log gets the type only
                message = f"cannot build the {row['kind'].upper()} of item {row['item_id']}: {type(err).__name__}: {err}"
                log.error("cannot build the %s of item %d: %s", row["kind"].upper(), row["item_id"], type(err).__name__)
                store.outbox_failed(row["id"], message[:500])
                continue
            atomic_write(self.data.outbox_file(row["id"]), buffer.getvalue())
            store.outbox_built(row["id"])
            built += 1
            log.info("built the %s of item %d (outbox %d)", row["kind"].upper(), row["item_id"], row["id"])
        return built

    def _read_source(self, sha: str):
        """The source header: a finished item's input is in processed/ (it was moved there before
        its row was finished)."""
        from hipcad.appliance.dicom import results as dicom_results

        try:
            return dicom_results.read_source(self.data.processed / sha)
        except FileNotFoundError:
            raise FileNotFoundError("the source image is no longer on disk") from None

    # -- sending -----------------------------------------------------------------------------------
    def send_due(self, store: Store) -> None:
        now = time.time()
        for dest in self.destinations.values():
            if self.stop_event.is_set():
                return
            if dest.failures and now < dest.next_try:
                continue
            rows = store.due_deliveries(dest.key, now, BATCH)
            if rows:
                self._send(store, dest, rows)

    def _send(self, store: Store, dest: Destination, rows) -> None:
        import pydicom
        from pynetdicom import AE

        ae = AE(ae_title=self.config.dicom_ae_title)
        ae.connection_timeout = 5
        ae.acse_timeout = 15
        ae.dimse_timeout = 60
        ae.network_timeout = 60
        for sop_class in sorted({r["sop_class_uid"] for r in rows}):
            ae.add_requested_context(sop_class, TRANSFER_SYNTAXES)
        # TLS: the PACS certificate is checked against pacs_tls_ca and the destination's host name
        tls_args = (self.tls_context, dest.host) if self.tls_context is not None else None
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
        if not assoc.is_established:
            if assoc.is_rejected:
                rj = assoc.acceptor.primitive
                why = (f"association rejected (result {getattr(rj, 'result', '?')}, source "
                       f"{getattr(rj, 'result_source', '?')}, reason {getattr(rj, 'diagnostic', '?')}): "
                       f"is our AE title {self.config.dicom_ae_title} known to it?")
            else:
                why = "no association (connection refused, timed out or aborted" + \
                      (", or the TLS handshake failed)" if tls_args else ")")
            self._destination_failed(dest, why)
            return
        ok = 0
        error = None
        try:
            for row in rows:
                if self.stop_event.is_set():
                    break
                ds = pydicom.dcmread(self.data.outbox_file(row["outbox_id"]))
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None:  # no response: the association was aborted or timed out
                    error = "no C-STORE response (connection lost)"
                    break
                if code in STORED:
                    store.delivery_sent(row["outbox_id"], dest.key)
                    ok += 1
                    log.info("sent the %s of item %d to %s (status 0x%04X)", row["kind"].upper(), row["item_id"],
                             dest.key, code)
                else:
                    attempts = row["attempts"] + 1
                    message = f"C-STORE of the {row['kind'].upper()} of item {row['item_id']} refused: status 0x{code:04X}"
                    log.warning("%s by %s", message, dest.key)
                    store.delivery_failed(row["outbox_id"], dest.key, message, time.time() + self._backoff(attempts))
                    dest.last_error, dest.last_error_at = message, time.time()
                if not assoc.is_established:
                    error = error or "the association was aborted"
                    break
        except Exception as err:  # noqa: BLE001 - a broken peer: back off
            error = f"{type(err).__name__}: {err}"
        finally:
            if assoc.is_established:
                assoc.release()
        if ok:
            dest.sent += ok
            dest.last_success_at = time.time()
            dest.failures = 0
        if error:
            self._destination_failed(dest, error)

    def _backoff(self, failures: int) -> float:
        return backoff(failures, self.config.pacs_retry_initial_s, self.config.pacs_retry_max_s)

    def _destination_failed(self, dest: Destination, why: str) -> None:
        dest.failures += 1
        delay = self._backoff(dest.failures)
        dest.next_try = time.time() + delay
        dest.last_error, dest.last_error_at = why, time.time()
        log.warning("PACS %s: %s; next try in %.1f s (failure %d)", dest.key, why, delay, dest.failures)
