"""Nothing an input does stops the worker (issue 18): a codec's panic costs its file on the first
attempt, a paused writer loses nothing, a burst never starves the systemd watchdog, a stuck
inference thread is noticed."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from hipcad.appliance.config import load_config
from hipcad.appliance.storage.store import Store
from hipcad.appliance.worker.hotfolder import INOTIFY_LOGGER
from hipcad.appliance.worker.sdnotify import Notifier
from hipcad.runtime.backends import open_backend
from tests.appliance.support import (  # noqa: F401 - fixtures
    WorkerProcess,
    drop,
    finished,
    kiosk_client,
    radiographs,
    small_bundle,
    store_counts,
    wait_for,
    worker_in_thread,
    write_config,
)
from tests.fuzz import cases


def rows(config_path: Path) -> list[dict]:
    store = Store(load_config(config_path, environ={}).db_path)
    try:
        return [dict(r) for r in store.db.execute("SELECT id, name, status, attempts, error, received_at, finished_at "
                                                  "FROM items ORDER BY id")]
    finally:
        store.close()


def test_a_codec_panic_is_quarantined_at_once_and_the_next_study_read(tmp_path, small_bundle, radiographs):
    """Issue 18.1 in the worker: pylibjpeg-rle panics (a BaseException) on a valid RLE image whose
    Rows is below its data. Before: the inference thread died three times (13 s without service)
    before the file was quarantined. Now: quarantined on the first attempt, the worker never stops."""
    config = write_config(tmp_path, small_bundle)
    hot = tmp_path / "hot"
    panic = cases.make_rle_panic(tmp_path / "rle_rows_below_data.dcm")
    with WorkerProcess(config) as worker:
        pid = worker.proc.pid
        drop(panic, hot)
        drop(radiographs[0], hot)
        wait_for(lambda: finished(config) == 2, 120, what="both files finished")
        assert worker.alive() and worker.proc.pid == pid
        assert worker.stop() == 0
        log_text = worker.text()
    first, second = rows(config)
    assert first["name"] == panic.name and first["status"] == "failed" and first["attempts"] == 1
    assert first["error"].startswith("cannot decode RLE Lossless pixel data: the decoder failed (PanicException")
    assert second["status"] == "done" and second["attempts"] == 1
    print(f"next study finished {second['finished_at'] - first['finished_at']:.2f} s after the quarantine")
    assert second["finished_at"] - first["finished_at"] < 30  # not a restart cycle (before: 3 deaths, 13 s)
    assert "inference thread stopped" not in log_text and "Traceback" not in log_text


def test_a_writer_pausing_mid_file_loses_nothing(tmp_path, small_bundle, radiographs):
    """Issue 18.4: a writer paused 6 s with its file open while rescans ran; the partial file was
    taken and failed as 'no pixel data', the rest of its bytes went into the quarantined file."""
    config = write_config(tmp_path, small_bundle, settle_s=0.5, rescan_interval_s=0.5)
    hot = tmp_path / "hot"
    src = next(p for p in radiographs if p.suffix == ".dcm")
    data = src.read_bytes()
    with WorkerProcess(config) as worker:
        wait_for(lambda: "watching" in worker.text(), 60, what="the worker to start")
        with open(hot / "paused.dcm", "wb") as writer:
            writer.write(data[: len(data) // 2])
            writer.flush()
            time.sleep(6.0)  # 12 rescans and 12 settle periods
            assert finished(config) == 0 and store_counts(config)["queued"] == 0
            writer.write(data[len(data) // 2:])
        wait_for(lambda: finished(config) == 1, 60, what="the file read after its close")
        assert worker.stop() == 0
    (item,) = rows(config)
    assert item["status"] == "done" and item["name"] == "paused.dcm"
    quarantine = tmp_path / "data" / "quarantine"
    assert not quarantine.exists() or not any(quarantine.iterdir())


class RecordingNotifier(Notifier):
    """sd_notify without a socket: records when the watchdog was pinged."""

    def __init__(self, interval: float) -> None:
        super().__init__({})
        self.watchdog_interval = interval
        self.pings: list[float] = []

    def send(self, *fields: str) -> bool:
        if "WATCHDOG=1" in fields:
            self.pings.append(time.monotonic())
        return True


def test_a_four_thousand_file_burst_keeps_the_watchdog_fed(tmp_path, small_bundle):
    """Issue 18.5: one intake pass of 4,000 files blocked the main loop for 29 s (a 32 s gap between
    pings against WatchdogSec=30). Intake now works in slices of 0.25 s."""
    config = load_config(write_config(tmp_path, small_bundle, settle_s=0.2, rescan_interval_s=3600), environ={})
    hot, count = config.hot_folder, 4000
    for i in range(count // 2):  # there at start: the first rescan finds them all at once
        (hot / f"early-{i:04d}.dcm").write_bytes(b"not a radiograph %d\n" % i * 8)
    notifier = RecordingNotifier(0.5)
    with worker_in_thread(config, notifier=notifier):
        wait_for(lambda: notifier.pings, 60, what="the first watchdog ping")
        start = time.monotonic()
        for i in range(count // 2):  # and as many while it runs, with an inotify queue overflow on the way
            (hot / f"late-{i:04d}.dcm").write_bytes(b"not a radiograph either %d\n" % i * 8)
            if i == count // 4:
                logging.getLogger(INOTIFY_LOGGER).warning("inotify event queue overflowed")
        wait_for(lambda: not any(hot.iterdir()), 900, interval=0.5, what="every file taken")
        end = time.monotonic()
        time.sleep(1.0)
    pings = [t for t in notifier.pings if start <= t <= end + 1.0]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    print(f"{count} files taken in {end - start:.1f} s; {len(pings)} pings, longest gap {max(gaps):.2f} s")
    assert len(pings) >= 2 and max(gaps) < 10.0
    counts = store_counts(tmp_path / "hipcad.toml")
    assert sum(counts.values()) == count  # every file queued (or already read), none lost or doubled


class BlockingBackend:
    """A real backend whose inference waits until released: a stuck inference thread."""

    def __init__(self, real, release: threading.Event) -> None:
        self.real, self.release = real, release

    def __getattr__(self, name):
        return getattr(self.real, name)

    def infer(self, batch):
        self.release.wait()
        return self.real.infer(batch)


def test_health_and_the_watchdog_notice_a_stuck_inference_thread(tmp_path, small_bundle, radiographs):
    config = load_config(write_config(tmp_path, small_bundle, watchdog_stale_s=2.0, decode_timeout_s=5.0), environ={})
    release = threading.Event()
    notifier = RecordingNotifier(0.2)
    client = kiosk_client(tmp_path / "hipcad.toml")

    def opener(name, bundle, **options):
        return BlockingBackend(open_backend("onnxruntime", bundle, **options), release)

    try:
        with worker_in_thread(config, backend_opener=opener, notifier=notifier):
            wait_for(lambda: notifier.pings, 60, what="the first watchdog ping")
            assert client.get("/api/health").status_code == 200
            drop(radiographs[0], config.hot_folder)
            response = wait_for(lambda: (r := client.get("/api/health")).status_code == 503 and r, 60,
                                what="health to say the reading is stuck")
            health = response.get_json()
            assert health["status"] == "down" and health["worker"]["up"] is True
            assert health["worker"]["inference_stuck"] is True and health["worker"]["inference_stage"] == "infer"
            stopped_at = time.monotonic()
            time.sleep(2.0)
            assert not [t for t in notifier.pings if t > stopped_at]  # no WATCHDOG=1: systemd restarts it
            page = client.get("/").get_data(as_text=True)
            assert "CAD READING STUCK" in page
            assert "hipcad_reading_stuck 1" in client.get("/metrics").get_data(as_text=True)
            release.set()
            wait_for(lambda: finished(tmp_path / "hipcad.toml") == 1, 60, what="the reading to resume")
            wait_for(lambda: client.get("/api/health").status_code == 200, 30, what="health to recover")
            resumed_at = time.monotonic()
            wait_for(lambda: [t for t in notifier.pings if t > resumed_at], 30, what="the watchdog pings to resume")
    finally:
        release.set()
    record = json.loads(next((tmp_path / "data" / "results").glob("*.json")).read_text())
    assert record["status"] == "done"
