"""The worker's inference thread: the one thread that owns the backend and reads queued radiographs.

For each queued item: the pipeline reads the spooled input; the read-first image and the result
record are written; the input is moved to ``processed/`` (or ``quarantine/`` with its reason) and
only then is the store row finished, naming where the input now lies. A backend that fails at run
time (not the file's fault) hands over to the next one and the item is read again (which backend,
and the return to a regional inference server: :mod:`.backend_choice`); a file that made the worker
stop ``max_attempts`` times is quarantined. Files are decoded by the worker's decoder (a pool of
disposable processes, :mod:`hipcad.runtime.imaging.isolation`): a decoder that could not run is no
file's fault -- the item is queued again.

Liveness: :attr:`Reader.beat` is refreshed at every turn of the loop and at every stage of an item
(:attr:`Reader.stage`: idle, decode, infer, write); :meth:`Reader.stuck` says when a stage has
lasted longer than it may (the worker then stops pinging systemd's watchdog, and health says so).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

from hipcad.appliance import drift
from hipcad.appliance.config import Config
from hipcad.appliance.dicom import results as dicom_results
from hipcad.appliance.storage.files import DataDir, remove_quietly
from hipcad.appliance.storage.store import Store
from hipcad.appliance.worker.backend_choice import BackendChoice
from hipcad.appliance.worker.intake import dump, write_reason
from hipcad.runtime.durable import atomic_write, move_durable
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.inference.overlay import encode
from hipcad.runtime.inference.pipeline import Pipeline

log = logging.getLogger("hipcad.worker")


class Reader:
    """Runs in its own thread (:meth:`run`); the worker's main loop watches :attr:`beat` and
    :attr:`fatal`, and sets :attr:`stop` / :attr:`wake`."""

    #: consecutive items whose decoder could not run before the thread gives up (the worker exits)
    DECODER_FAILURES = 3

    def __init__(self, config: Config, data: DataDir, bundle, truth: dict, backend_opener, forwarder=None,
                 decoder=None) -> None:
        self.config, self.data, self.bundle, self.truth = config, data, bundle, truth
        self.choice = BackendChoice(config, bundle, backend_opener)
        self.forwarder = forwarder
        self.decoder = decoder  # None: in this process
        self.stage = "idle"
        self._decoder_failures = 0
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.ready = threading.Event()  # set once the backend is up (or could not be)
        self.fatal: str | None = None
        self.beat = time.monotonic()  # refreshed at every turn of the loop and every stage of an item
        self.pipeline: Pipeline | None = None
        #: item id -> when the hot folder found its file complete (set by the main thread, taken
        #: here): the first of the result record's ``stamps``
        self.arrivals: dict[int, float] = {}

    @property
    def backend_info(self) -> dict:
        return self.choice.info

    def run(self) -> None:
        store = Store(self.config.db_path)
        backend = None
        try:
            try:
                backend = self.choice.first(store)
            except HipcadError as err:
                self.fatal = f"no inference backend: {err}"
                return
            self.pipeline = self._pipeline(backend)
            if backend.fallback_reason:
                log.warning("inference backend %s (%s); not used: %s", backend.name, backend.device, backend.fallback_reason)
            self.ready.set()
            while not self.stop.is_set():
                self._mark("idle")
                returned = self.choice.maybe_return(backend, store)
                if returned is not backend:
                    backend, self.pipeline = returned, self._pipeline(returned)
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

    def _pipeline(self, backend) -> Pipeline:
        return Pipeline(self.bundle, backend, heatmap=self.config.heatmap, score_ineligible=self.config.score_ineligible,
                        decoder=self.decoder)

    def _mark(self, stage: str) -> None:
        self.stage, self.beat = stage, time.monotonic()

    def stuck(self, stale_s: float, decode_s: float, now: float | None = None) -> bool:
        """No sign of life for longer than the current stage may take: ``stale_s``, and the decode
        timeout on top while a file is being decoded."""
        now = time.monotonic() if now is None else now
        return now - self.beat > stale_s + (decode_s if self.stage == "decode" else 0.0)

    def _process(self, item, store: Store, backend):
        item_id, sha, data = item["id"], item["sha256"], self.data
        claimed_at = time.time()
        if item["attempts"] > self.config.max_attempts:
            reason = f"the worker stopped {item['attempts'] - 1} times while reading this file"
            self._quarantine(item, store, reason, {})
            return backend
        both = data.overlay_all(item_id) if self.config.heatmap == "suspected" else None
        self._mark("decode")
        loaded = self.pipeline.load(data.spool(sha))
        self._mark("infer")
        result = self.pipeline.complete(loaded, data.overlay(item_id), both)
        read_at = time.time()
        self._mark("write")
        if result.error_kind == "decoder":
            remove_quietly(*data.result_files(item_id))
            store.requeue(item_id)
            self._decoder_failures += 1
            if not self.stop.is_set() and self._decoder_failures >= self.DECODER_FAILURES:
                raise HipcadError(f"the decoder cannot run: {result.error}")
            return backend
        self._decoder_failures = 0
        if result.error_kind == "backend":
            remove_quietly(*data.result_files(item_id))
            store.requeue(item_id)
            backend = self.choice.failed(backend, result.failure or result.error, store)
            self.pipeline = self._pipeline(backend)
            return backend
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
            remove_quietly(data.overlay(item_id), data.overlay_all(item_id))
            self._quarantine(item, store, result.error or "unknown error", record)
            return backend
        record["input"] = f"processed/{sha}"
        record["heatmap"] = self.config.heatmap
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
        drift.record(store, record, self.bundle)
        if outbox:
            self.forwarder.wake.set()
        verdicts = ", ".join(f"{s.side}: {s.words} ({s.probability:.2f})" for s in result.sides)
        if result.eligible is False:  # the names of the failed checks only: a reason may quote a DICOM value
            failed = [name for name, c in result.eligibility.get("checks", {}).items() if not c["passed"]]
            verdicts = f"not assessed (failed checks: {', '.join(failed)})" + (f"; {verdicts}" if verdicts else "")
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
        drift.record(store, record, self.bundle)
        store.count("quarantined")
        log.warning("item %d quarantined: %s", item_id, reason)
