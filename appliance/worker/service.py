"""``hipcad worker``: hot folder / DICOM listener -> durable queue -> one inference thread -> result
store (-> results to PACS).

Threads: the main thread takes complete files from the hot folder into the queue, in slices of at
most ``TAKE_BUDGET_S`` so that a burst never starves it, and keeps house (heartbeat, systemd
watchdog, rescans, disk guard, retention); watchdog's observer thread reports file events; ONE
inference thread creates the backend and is the only thread that touches it. Files are decoded in
separate, disposable processes (``decode_isolation``), so that a codec's crash or hang costs that file.
Where configured: pynetdicom's threads serve the DICOM listener (one per association), and one
forwarding thread builds the DICOM results and sends them to PACS (:mod:`.forward`).
SIGTERM: the current image is finished, then the worker exits 0. The inference thread is
:class:`~hipcad.appliance.worker.reader.Reader`; the command line is :mod:`.cli`.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from hipcad.appliance.config import Config
from hipcad.appliance.dicom.forward import Forwarder
from hipcad.appliance.dicom.scp import Listener
from hipcad.appliance.storage.files import DataDir
from hipcad.appliance.storage.store import Store
from hipcad.appliance.worker.hotfolder import HotFolder
from hipcad.appliance.worker.intake import enforce_retention, free_mb, ingest, load_truth, reconcile
from hipcad.appliance.worker.reader import Reader
from hipcad.appliance.worker.sdnotify import Notifier
from hipcad.appliance.worker.writers import StillOpenError
from hipcad.runtime.backends import open_backend
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.imaging.isolation import DecodePool, InProcessDecoder, IsolationLimits
from hipcad.runtime.model.bundle import load_bundle

log = logging.getLogger("hipcad.worker")

HEARTBEAT_S = 2.0
DISK_CHECK_S = 5.0
RETENTION_S = 3600.0
LISTENER_RETRY_S = 30.0
TAKE_BUDGET_S = 0.25  # at most this long taking files in one turn of the main loop
TAKE_BATCH = 64


def make_decoder(config: Config):
    """The worker's decoder: one warm disposable process (or, without isolation, this process)."""
    if not config.decode_isolation:
        return InProcessDecoder()
    return DecodePool(1, IsolationLimits(timeout_s=config.decode_timeout_s, memory_mb=config.decode_memory_mb))


def box_backend_opener(config: Config):
    """open_backend as the box uses it: TensorRT plans only from engine_cache_dir (or the bundle's
    engines/), verified and never built here; hipcad-engine.service builds them."""
    tensorrt = {"cache_dir": config.engine_cache_dir or None, "allow_build": False}
    return lambda name, bundle, **options: open_backend(name, bundle, per_backend={"tensorrt": tensorrt}, **options)


class Worker:
    def __init__(self, config: Config, backend_opener=None, notifier: Notifier | None = None) -> None:
        self.config = config
        self.open_backend = backend_opener or box_backend_opener(config)
        self.notifier = notifier or Notifier()
        self.data = DataDir(config.data_dir)
        self.stop = threading.Event()
        #: set by the signal handler; a handler must take no lock (the main thread may hold the
        #: Event's own lock when the signal arrives), so the main loop turns it into ``stop``
        self.signalled: int | None = None
        self.bundle = None
        self.reader: Reader | None = None
        self.accepting = True
        self.disk_free_mb: float | None = None
        self._thread: threading.Thread | None = None
        self.disk_check_s = DISK_CHECK_S
        self.listener: Listener | None = None
        self.forwarder: Forwarder | None = None
        self.decoder = None

    # -- the main thread --------------------------------------------------------------------
    def run(self) -> int:
        config = self.config
        try:
            self.bundle = load_bundle(config.model or None, config.trust())
            truth = load_truth(config.truth_labels)
            if config.pacs_destinations:
                self.forwarder = Forwarder(config, self.data)
        except HipcadError as err:
            log.error("cannot start: %s", err)
            return 2
        self.data.create()
        config.hot_folder.mkdir(parents=True, exist_ok=True)
        store = Store(config.db_path)
        reconcile(store, self.data)
        self.started_at = time.time()
        self.decoder = make_decoder(config)
        if isinstance(self.decoder, DecodePool):
            self.decoder.start(wait=False)  # while the backend loads
        reader = self.reader = Reader(config, self.data, self.bundle, truth, self.open_backend, self.forwarder,
                                      self.decoder)
        self._thread = threading.Thread(target=reader.run, name="inference", daemon=True)
        self._thread.start()
        reader.ready.wait()
        if reader.fatal:
            log.error("%s", reader.fatal)
            self.decoder.close()
            self._beat(store, state="stopped")
            return 1
        hot = HotFolder(config.hot_folder, config.settle_s, config.polling, config.poll_interval_s, config.quiet_s)
        hot.start()
        if self.forwarder is not None:
            self.forwarder.start()
        if config.dicom_port:
            self.listener = Listener(config, self.data, accepting=lambda: self.accepting, on_queued=reader.wake.set)
            self._start_listener(store)
        backend = reader.backend_info
        log.info("watching %s (%s); model %s; backend %s on %s", config.hot_folder,
                 "polling" if config.polling else "inotify", self.bundle.label, backend.get("name"), backend.get("device"))
        self.notifier.ready(f"watching the hot folder; backend {backend.get('name')}")
        code = 0
        last = dict.fromkeys(("beat", "disk", "retention", "rescan", "watchdog"), float("-inf"))
        last["listener"] = time.monotonic()
        try:
            while not self.stop.is_set():
                if self.signalled is not None:
                    log.info("signal %d received", self.signalled)
                    break
                now = time.monotonic()
                if now - last["disk"] >= self.disk_check_s:
                    last["disk"] = now
                    self._check_disk()
                if now - last["retention"] >= RETENTION_S:
                    last["retention"] = now
                    enforce_retention(store, self.data, config.retention_days)
                if hot.rescan_due() or now - last["rescan"] >= config.rescan_interval_s:
                    last["rescan"] = now
                    hot.rescan()
                more = self.accepting and self._take(hot, store)
                if self.listener is not None and not self.listener.alive() and now - last["listener"] >= LISTENER_RETRY_S:
                    last["listener"] = now
                    self._start_listener(store)
                healthy = self._healthy(hot)
                if now - last["beat"] >= HEARTBEAT_S:
                    last["beat"] = now
                    self._beat(store, hot=hot)
                if healthy and self.notifier.watchdog_interval and now - last["watchdog"] >= self.notifier.watchdog_interval:
                    last["watchdog"] = now
                    self.notifier.watchdog()
                if reader.fatal or not self._thread.is_alive():
                    log.error("the inference thread stopped: %s", reader.fatal or "unknown reason")
                    code = 1
                    break
                if not hot.alive():
                    log.error("the hot-folder observer stopped")
                    code = 1
                    break
                if self.forwarder is not None and not self.forwarder.alive():
                    log.error("the forwarding thread stopped: %s", self.forwarder.fatal or "unknown reason")
                    code = 1
                    break
                if not more:
                    time.sleep(0.1)
        finally:
            self.notifier.stopping()
            log.info("stopping: finishing the current image")
            self.stop.set()
            reader.stop.set()
            reader.wake.set()
            if self.listener is not None:
                self.listener.stop()  # no new C-STORE; those being written finish first
            hot.stop()
            self._thread.join()  # a decode ends within decode_timeout_s
            self.decoder.close()
            if self.forwarder is not None:
                self.forwarder.stop()
            self._beat(store, state="stopped")
            store.close()
        log.info("stopped")
        return code

    def _take(self, hot: HotFolder, store: Store) -> bool:
        """Take ready files for at most TAKE_BUDGET_S; True when more may be ready at once."""
        start, taken = time.monotonic(), 0
        paths = hot.ready(TAKE_BATCH)
        for path in paths:
            if self.stop.is_set() or self.signalled is not None or time.monotonic() - start >= TAKE_BUDGET_S:
                return taken > 0
            try:
                ready_at = time.time()
                item_id = ingest(path, self.config.hot_folder, store, self.data)
                if item_id is not None:
                    self.reader.arrivals[item_id] = ready_at
                    self.reader.wake.set()
                hot.taken(path)
                taken += 1
            except StillOpenError:
                hot.busy(path)  # a writer still has it: it waits for the close
            except OSError as err:
                log.error("cannot take a file from the hot folder: %s", err.strerror or err)
                hot.taken(path)
        return taken > 0 and len(paths) >= TAKE_BATCH

    def _start_listener(self, store: Store) -> None:
        try:
            self.listener.start()
        except (OSError, HipcadError) as err:
            self.listener.error = self.listener.error or str(err)
            log.error("DICOM listener not started: %s (retrying every %.0f s)", getattr(err, "strerror", None) or err,
                      LISTENER_RETRY_S)
            store.add_event("dicom", self.listener.error)

    def _check_disk(self) -> None:
        self.disk_free_mb = round(free_mb(self.data.root), 1)
        accepting = self.disk_free_mb >= self.config.min_free_mb
        if accepting != self.accepting:
            if accepting:
                log.warning("disk space is back (%.0f MB free); accepting new files", self.disk_free_mb)
            else:
                log.error("only %.0f MB free (minimum %d): not accepting new files", self.disk_free_mb, self.config.min_free_mb)
        self.accepting = accepting

    def _healthy(self, hot: HotFolder) -> bool:
        alive = self._thread is not None and self._thread.is_alive()
        return alive and hot.alive() and not self._stuck()

    def _stuck(self) -> bool:
        return self.reader is not None and self.reader.stuck(self.config.watchdog_stale_s, self.config.decode_timeout_s)

    def _beat(self, store: Store, hot: HotFolder | None = None, state: str = "running") -> None:
        store.put_state("worker", {
            "state": state,
            "pid": os.getpid(),
            "started_at": getattr(self, "started_at", None),
            "observer_alive": bool(hot and hot.alive()),
            "inference_alive": bool(self._thread and self._thread.is_alive()),
            "inference_heartbeat_age_s": round(time.monotonic() - self.reader.beat, 1) if self.reader else None,
            "inference_stage": self.reader.stage if self.reader else None,
            "inference_stuck": self._stuck(),
            "decoder": self.decoder.status() if self.decoder is not None else None,
            "writer_check": hot.writer_check if hot else None,
            "pending_in_hot_folder": hot.pending() if hot else 0,
            "accepting": self.accepting,
            "disk_free_mb": self.disk_free_mb,
            "min_free_mb": self.config.min_free_mb,
            "backend": self.reader.backend_info if self.reader else {},
            "model": self.bundle.describe() if self.bundle else None,
            "hot_folder_mode": "polling" if self.config.polling else "inotify",
            "dicom_listener": self.listener.status() if self.listener is not None else {"enabled": False},
            "forwarder_alive": self.forwarder.alive() if self.forwarder is not None else None,
        })
