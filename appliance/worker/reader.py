"""The worker's inference thread: the one thread that owns the backend and reads queued radiographs.

For each queued item: the pipeline reads the spooled input; the read-first image and the result
record are written; the input is moved to ``processed/`` (or ``quarantine/`` with its reason) and
only then is the store row finished, naming where the input now lies. A backend that fails at run
time (not the file's fault) hands over to the next backend in the ``auto`` order and the item is
read again; a file that made the worker stop ``max_attempts`` times is quarantined.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

from hipcad.appliance.config import Config
from hipcad.appliance.dicom import results as dicom_results
from hipcad.appliance.storage.files import DataDir, remove_quietly
from hipcad.appliance.storage.store import Store
from hipcad.appliance.worker.intake import dump, write_reason
from hipcad.runtime.backends import AUTO_ORDER
from hipcad.runtime.durable import atomic_write, move_durable
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.inference.overlay import encode
from hipcad.runtime.inference.pipeline import Pipeline

log = logging.getLogger("hipcad.worker")


class Reader:
    """Runs in its own thread (:meth:`run`); the worker's main loop watches :attr:`beat` and
    :attr:`fatal`, and sets :attr:`stop` / :attr:`wake`."""

    def __init__(self, config: Config, data: DataDir, bundle, truth: dict, backend_opener, forwarder=None) -> None:
        self.config, self.data, self.bundle, self.truth = config, data, bundle, truth
        self.open_backend = backend_opener
        self.forwarder = forwarder
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.ready = threading.Event()  # set once the backend is up (or could not be)
        self.fatal: str | None = None
        self.beat = time.monotonic()  # refreshed at every turn of the loop
        self.backend_info: dict = {}
        self.pipeline: Pipeline | None = None
        #: item id -> when the hot folder found its file complete (set by the main thread, taken
        #: here): the first of the result record's ``stamps``
        self.arrivals: dict[int, float] = {}

    def run(self) -> None:
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
            self.ready.set()
            while not self.stop.is_set():
                self.beat = time.monotonic()
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
            self.ready.set()
            store.close()

    def _use(self, backend, store: Store, runtime_fallback: str | None = None) -> None:
        self.pipeline = Pipeline(self.bundle, backend)
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
        claimed_at = time.time()
        if item["attempts"] > self.config.max_attempts:
            reason = f"the worker stopped {item['attempts'] - 1} times while reading this file"
            self._quarantine(item, store, reason, {})
            return backend
        result = self.pipeline.run(data.spool(sha), data.overlay(item_id))
        read_at = time.time()
        if result.error_kind == "backend":
            remove_quietly(*data.result_files(item_id))
            store.requeue(item_id)
            return self._fall_back(backend, result.failure or result.error, store)
        record = {
            "id": item_id,
            "status": "done" if result.ok else "failed",
            "sha256": sha,
            "file": item["name"],
            "received_at": item["received_at"],
            "finished_at": read_at,
            **result.to_json(),
            # when it became ready in the hot folder (absent for C-STORE and after a restart), was
            # queued, taken by this thread and read: with the row's finished_at, where the time went
            "stamps": {"ready_at": self.arrivals.pop(item_id, None), "received_at": item["received_at"],
                       "claimed_at": claimed_at, "read_at": read_at},
        }
        if not result.ok:
            remove_quietly(data.overlay(item_id))
            self._quarantine(item, store, result.error or "unknown error", record)
            return backend
        record["input"] = f"processed/{sha}"
        buffer = io.BytesIO()
        encode(result.display, buffer)
        atomic_write(data.image(item_id), buffer.getvalue())
        atomic_write(data.result_json(item_id), dump(record))
        outbox = None
        if self.forwarder is not None and result.metadata.get("source_format") == "dicom" \
                and result.metadata.get("study_instance_uid"):
            outbox = dicom_results.plan(self.forwarder.keys)  # new UIDs, persisted with the result
        move_durable(data.spool(sha), data.processed / sha)
        store.finish(item_id, "done", result=record, patient=result.patient, total_ms=result.timings_ms.get("total"),
                     truth=self.truth.get(Path(item["name"]).name), outbox=outbox)
        if outbox:
            self.forwarder.wake.set()
        verdicts = ", ".join(f"{s.side}: {s.words} ({s.probability:.2f})" for s in result.sides)
        log.info("item %d read in %.0f ms (%.0f ms queued, %.0f ms to store): %s", item_id, result.timings_ms.get("total", 0.0),
                 (claimed_at - item["received_at"]) * 1000.0, (time.time() - read_at) * 1000.0, verdicts)
        return backend

    def _quarantine(self, item, store: Store, reason: str, record: dict) -> None:
        item_id, sha, data = item["id"], item["sha256"], self.data
        record = {**record, "id": item_id, "status": "failed", "error": reason, "sha256": sha, "file": item["name"],
                  "input": f"quarantine/{sha}"}
        write_reason(data, sha, item["name"], reason)
        atomic_write(data.result_json(item_id), dump(record))
        spool = data.spool(sha)
        if spool.exists():
            move_durable(spool, data.quarantine / sha)
        store.finish(item_id, "failed", error=reason, result=record)
        store.count("quarantined")
        log.warning("item %d quarantined: %s", item_id, reason)

    def _fall_back(self, backend, failure, store: Store):
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
