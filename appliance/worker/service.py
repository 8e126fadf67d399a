"""``hipcad worker``: hot folder / DICOM listener -> durable queue -> one inference thread -> result
store (-> results to PACS).

Threads: the main thread takes complete files from the hot folder into the queue and keeps house
(heartbeat, systemd watchdog, rescans, disk guard, retention); watchdog's observer thread reports
file events; ONE inference thread creates the backend and is the only thread that touches it.
Where configured: pynetdicom's threads serve the DICOM listener (one per association), and one
forwarding thread builds the DICOM results and sends them to PACS (:mod:`.forward`).
SIGTERM: the current image is finished, then the worker exits 0.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from hipcad.runtime.backends import AUTO_ORDER, open_backend
from hipcad.runtime.model.bundle import load_bundle
from hipcad.runtime.errors import BadInputError, HipcadError
from hipcad.runtime.inference.overlay import MAX_SIDE, display_size, encode
from hipcad.runtime.inference.pipeline import Pipeline

from hipcad.appliance.dicom import results as dicom_results
from hipcad.appliance.config import Config, ConfigError, load_config
from hipcad.appliance.storage.files import DataDir, remove_quietly
from hipcad.runtime.durable import atomic_write, move_durable
from hipcad.appliance.worker.hotfolder import HotFolder
from hipcad.appliance.dicom.scp import Listener
from hipcad.appliance.dicom.forward import Forwarder
from hipcad.appliance.worker.intake import FileChangedError, dump, enforce_retention, free_mb, ingest, load_truth, reconcile, write_reason
from hipcad.appliance.worker.sdnotify import Notifier
from hipcad.appliance.storage.store import Store

log = logging.getLogger("hipcad.worker")

HEARTBEAT_S = 2.0
DISK_CHECK_S = 5.0
RETENTION_S = 3600.0
LISTENER_RETRY_S = 30.0


class GuardedBackend:
    """Passes everything through to the backend and remembers a failure of ``infer`` that is not
    the input's fault (the pipeline turns every exception into an error string)."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.failure: BaseException | None = None

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def infer(self, batch):
        try:
            return self.backend.infer(batch)
        except BadInputError:
            raise
        except Exception as err:
            self.failure = err
            raise


class CapturingPipeline(Pipeline):
    """A pipeline that keeps the decoded radiograph, for the plain image read-first mode shows."""

    radiograph = None

    def decode(self, path):
        self.radiograph = super().decode(path)
        return self.radiograph


def plain_image(radiograph) -> bytes:
    """The radiograph alone at overlay size, encoded as the overlay is (JPEG)."""
    from PIL import Image

    h, w = display_size(radiograph.pixels.shape, MAX_SIDE)
    buf = io.BytesIO()
    encode(Image.fromarray(radiograph.pixels).resize((w, h), Image.BILINEAR, reducing_gap=1.0), buf)  # as the overlay
    return buf.getvalue()


class Worker:
    def __init__(self, config: Config, backend_opener=open_backend, notifier: Notifier | None = None) -> None:
        self.config = config
        self.open_backend = backend_opener
        self.notifier = notifier or Notifier()
        self.data = DataDir(config.data_dir)
        self.stop = threading.Event()
        #: set by the signal handler; a handler must take no lock (the main thread may hold the
        #: Event's own lock when the signal arrives), so the main loop turns it into ``stop``
        self.signalled: int | None = None
        self.wake = threading.Event()
        self.backend_ready = threading.Event()
        self.fatal: str | None = None
        self.infer_beat = time.monotonic()
        self.bundle = None
        self.truth: dict[str, dict[str, int]] = {}
        self.backend_info: dict = {}
        self.accepting = True
        self.disk_free_mb: float | None = None
        self._thread: threading.Thread | None = None
        self.disk_check_s = DISK_CHECK_S
        self.listener: Listener | None = None
        self.forwarder: Forwarder | None = None

    # -- the main thread --------------------------------------------------------------------
    def run(self) -> int:
        config = self.config
        try:
            self.bundle = load_bundle(config.model or None)
            self.truth = load_truth(config.truth_labels)
        except HipcadError as err:
            log.error("cannot start: %s", err)
            return 2
        self.data.create()
        config.hot_folder.mkdir(parents=True, exist_ok=True)
        store = Store(config.db_path)
        reconcile(store, self.data)
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._inference_thread, name="inference", daemon=True)
        self._thread.start()
        self.backend_ready.wait()
        if self.fatal:
            log.error("%s", self.fatal)
            self._beat(store, state="stopped")
            return 1
        hot = HotFolder(config.hot_folder, config.settle_s, config.polling, config.poll_interval_s)
        hot.start()
        if config.pacs_destinations:
            self.forwarder = Forwarder(config, self.data)
            self.forwarder.start()
        if config.dicom_port:
            self.listener = Listener(config, self.data, accepting=lambda: self.accepting, on_queued=self.wake.set)
            self._start_listener(store)
        log.info("watching %s (%s); model %s; backend %s on %s", config.hot_folder,
                 "polling" if config.polling else "inotify", self.bundle.label, self.backend_info.get("name"),
                 self.backend_info.get("device"))
        self.notifier.ready(f"watching the hot folder; backend {self.backend_info.get('name')}")
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
                if self.accepting:
                    self._take(hot, store)
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
                if self.fatal or not self._thread.is_alive():
                    log.error("the inference thread stopped: %s", self.fatal or "unknown reason")
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
                time.sleep(0.1)
        finally:
            self.notifier.stopping()
            log.info("stopping: finishing the current image")
            self.stop.set()
            self.wake.set()
            if self.listener is not None:
                self.listener.stop()  # no new C-STORE; those being written finish first
            hot.stop()
            self._thread.join()
            if self.forwarder is not None:
                self.forwarder.stop()
            self._beat(store, state="stopped")
            store.close()
        log.info("stopped")
        return code

    def _take(self, hot: HotFolder, store: Store) -> None:
        for path in hot.ready():
            if self.stop.is_set():
                return
            try:
                if ingest(path, self.config.hot_folder, store, self.data) is not None:
                    self.wake.set()
                hot.taken(path)
            except FileChangedError:
                pass  # still being written: stays a candidate
            except OSError as err:
                log.error("cannot take a file from the hot folder: %s", err.strerror or err)
                hot.taken(path)

    def _start_listener(self, store: Store) -> None:
        try:
            self.listener.start()
        except OSError as err:
            log.error("DICOM listener not started: %s (retrying every %.0f s)", err.strerror or err, LISTENER_RETRY_S)
            store.add_event("dicom", self.listener.error or str(err))

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
        return alive and hot.alive() and time.monotonic() - self.infer_beat < self.config.watchdog_stale_s

    def _beat(self, store: Store, hot: HotFolder | None = None, state: str = "running") -> None:
        store.put_state("worker", {
            "state": state,
            "pid": os.getpid(),
            "started_at": getattr(self, "started_at", None),
            "observer_alive": bool(hot and hot.alive()),
            "inference_alive": bool(self._thread and self._thread.is_alive()),
            "inference_heartbeat_age_s": round(time.monotonic() - self.infer_beat, 1),
            "pending_in_hot_folder": hot.pending() if hot else 0,
            "accepting": self.accepting,
            "disk_free_mb": self.disk_free_mb,
            "min_free_mb": self.config.min_free_mb,
            "backend": self.backend_info,
            "model": self.bundle.describe() if self.bundle else None,
            "hot_folder_mode": "polling" if self.config.polling else "inotify",
            "dicom_listener": self.listener.status() if self.listener is not None else {"enabled": False},
            "forwarder_alive": self.forwarder.alive() if self.forwarder is not None else None,
        })

    # -- the inference thread ------------------------------------------------------------------
    def _inference_thread(self) -> None:
        store = Store(self.config.db_path)
        backend = None
        try:
            try:
                backend = self.open_backend(self.config.backend, self.bundle)
            except HipcadError as err:
                self.fatal = f"no inference backend: {err}"
                return
            self._use(backend, store)
            if backend.fallback_reason:
                log.warning("inference backend %s (%s); not used: %s", backend.name, backend.device, backend.fallback_reason)
            self.backend_ready.set()
            while not self.stop.is_set():
                self.infer_beat = time.monotonic()
                item = store.claim_next()
                if item is None:
                    self.wake.wait(0.5)
                    self.wake.clear()
                    continue
                backend = self._process(item, store, backend)
        except Exception as err:  # noqa: BLE001 - reported, then the worker exits non-zero
            log.exception("inference thread failed")
            self.fatal = f"{type(err).__name__}: {err}"
        finally:
            if backend is not None:
                backend.deactivate()
            self.backend_ready.set()
            store.close()

    def _use(self, backend, store: Store, runtime_fallback: str | None = None) -> None:
        self.guard = GuardedBackend(backend)
        self.pipeline = CapturingPipeline(self.bundle, self.guard)
        self.backend_info = {
            "name": backend.name,
            "device": backend.device,
            "precision": backend.precision,
            "fallback_reason": backend.fallback_reason,
            "runtime_fallback": runtime_fallback or self.backend_info.get("runtime_fallback"),
            "load_seconds": round(backend.load_seconds or 0.0, 2),
        }
        store.put_state("backend", self.backend_info)

    def _process(self, item, store: Store, backend):
        item_id, sha, data = item["id"], item["sha256"], self.data
        if item["attempts"] > self.config.max_attempts:
            reason = f"the worker stopped {item['attempts'] - 1} times while reading this file"
            self._quarantine(item, store, reason, {})
            return backend
        spool = data.spool(sha)
        self.guard.failure = None
        self.pipeline.radiograph = None
        result = self.pipeline.run(spool, data.overlay(item_id))
        self.pipeline.radiograph, radiograph = None, self.pipeline.radiograph
        if self.guard.failure is not None:
            remove_quietly(*data.result_files(item_id))
            store.requeue(item_id)
            return self._fall_back(backend, self.guard.failure, store)
        record = {
            "id": item_id,
            "status": "done" if result.ok else "failed",
            "sha256": sha,
            "file": item["name"],
            "received_at": item["received_at"],
            "finished_at": time.time(),
            **result.to_json(),
        }
        record["input"] = f"incoming/{sha}"
        if not result.ok:
            remove_quietly(data.overlay(item_id))
            self._quarantine(item, store, result.error or "unknown error", record)
            return backend
        atomic_write(data.image(item_id), plain_image(radiograph))
        atomic_write(data.result_json(item_id), dump(record))
        outbox = None
        if self.forwarder is not None and result.metadata.get("source_format") == "dicom" \
                and result.metadata.get("study_instance_uid"):
            outbox = dicom_results.plan(self.forwarder.keys)  # new UIDs, persisted with the result
        store.finish(item_id, "done", result=record, patient=result.patient, total_ms=result.timings_ms.get("total"),
                     truth=self.truth.get(Path(item["name"]).name), outbox=outbox)
        move_durable(spool, data.processed / sha)
        if outbox:
            self.forwarder.wake.set()
        verdicts = ", ".join(f"{s.side}: {s.words} ({s.probability:.2f})" for s in result.sides)
        log.info("item %d read in %.0f ms: %s", item_id, result.timings_ms.get("total", 0.0), verdicts)
        return backend

    def _quarantine(self, item, store: Store, reason: str, record: dict) -> None:
        item_id, sha, data = item["id"], item["sha256"], self.data
        record = {**record, "id": item_id, "status": "failed", "error": reason, "sha256": sha, "file": item["name"]}
        write_reason(data, sha, item["name"], reason)
        atomic_write(data.result_json(item_id), dump(record))
        store.finish(item_id, "failed", error=reason, result=record)
        store.count("quarantined")
        spool = data.spool(sha)
        if spool.exists():
            move_durable(spool, data.quarantine / sha)
        log.warning("item %d quarantined: %s", item_id, reason)

    def _fall_back(self, backend, failure: BaseException, store: Store):
        """The backend failed at run time: the next backend in AUTO_ORDER takes over."""
        current = backend.name
        log.error("backend %s failed at run time: %s", current, failure)
        backend.deactivate()
        order = list(AUTO_ORDER)
        candidates = order[order.index(current) + 1:] if current in order else []
        for name in candidates:
            try:
                new = self.open_backend(name, self.bundle)
            except HipcadError as err:
                log.error("fallback backend %s could not be loaded: %s", name, err)
                continue
            message = f"{current} failed at run time ({failure}); now using {new.name} on {new.device}"
            log.warning("inference fell back: %s", message)
            store.add_event("fallback", message)
            store.count("backend_fallbacks")
            self._use(new, store, runtime_fallback=message)
            return new
        raise HipcadError(f"backend {current} failed at run time and no other backend could take over: {failure}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hipcad worker",
        description="Watch a hot folder and read every complete radiograph once: durable queue and result store in "
        "DATA_DIR, one inference thread. Runs until SIGTERM (the current image is finished first).",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML configuration (see systemd/hipcad.toml.example); "
                        "every key can also be set as HIPCAD_<KEY> in the environment")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        print(f"hipcad worker: {err}", file=sys.stderr)
        return 2
    setup_logging("DEBUG" if args.verbose else config.log_level)
    worker = Worker(config)

    def on_signal(signum, frame):
        worker.signalled = signum  # no lock, no logging here: see Worker.signalled

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return worker.run()


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("watchdog", "PIL", "pynetdicom", "highdicom"):  # pynetdicom's INFO/DEBUG lines can quote datasets
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
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


if __name__ == "__main__":
    sys.exit(main())
