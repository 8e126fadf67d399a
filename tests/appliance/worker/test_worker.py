"""hipcad worker: hot folder -> durable queue -> one inference thread -> result store."""

from __future__ import annotations

import io
import json
import os
import random
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from hipcad.appliance.config import ConfigError, load_config
from hipcad.appliance.storage.files import DataDir
from hipcad.appliance.storage.store import Store
from hipcad.appliance.worker.reader import Reader
from hipcad.appliance.worker.service import Worker
from hipcad.runtime.backends import open_backend
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.model.bundle import DEFAULT_BUNDLE, load_bundle
from tests.appliance.support import (  # noqa: F401 - fixtures
    WorkerProcess,
    demo_process,
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
from tests.helpers import REPO

HOSTILE_NAME = "<script>alert(1)</script>"
HOSTILE_UID = "../../etc/passwd"
HOSTILE_FILE = "<script>alert(3).dcm"  # a file name cannot hold '/'; '<' it can


def all_results(client) -> list[dict]:
    response = client.get("/api/results?limit=500")
    assert response.status_code == 200
    return response.get_json()["results"]


# -- configuration ---------------------------------------------------------------------------
def test_config_file_then_environment(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('hot_folder = "/srv/hot"\ndata_dir = "/srv/data"\nread_first = true\nsettle_s = 2\n')
    config = load_config(path, environ={"HIPCAD_DATA_DIR": "/srv/other", "HIPCAD_READ_FIRST": "no",
                                        "HIPCAD_KIOSK_BIND": "0.0.0.0", "HIPCAD_MIN_FREE_MB": "64"})
    assert config.hot_folder == Path("/srv/hot") and config.data_dir == Path("/srv/other")
    assert config.read_first is False and config.settle_s == 2.0 and config.min_free_mb == 64
    assert config.kiosk_bind == "0.0.0.0" and config.needs_auth
    path.write_text('no_such_key = 1\n')
    with pytest.raises(ConfigError, match="no_such_key"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="HIPCAD_SETTLE_S"):
        load_config(None, environ={"HIPCAD_SETTLE_S": "soon"})


def test_example_config_documents_every_key():
    from hipcad.appliance.config import KEYS

    example = REPO / "systemd" / "hipcad.toml.example"
    text = example.read_text()
    for key in KEYS:
        assert f"\n{key} =" in text or f"\n# {key} =" in text, key
        assert f"HIPCAD_{key.upper()}" in text, key


# -- throughput and idempotence ------------------------------------------------------------------
def test_fifty_dropped_at_once_each_read_once(tmp_path, small_bundle, radiographs):
    config = write_config(tmp_path, small_bundle)
    hot = tmp_path / "hot"
    with WorkerProcess(config) as worker:
        slow = radiographs[:6]
        threads = [threading.Thread(target=drop, args=(src, hot), kwargs={"chunks": 4, "pause": 0.15}) for src in slow]
        for t in threads:
            t.start()
        for src in radiographs[6:]:
            drop(src, hot)
        for t in threads:
            t.join()
        wait_for(lambda: finished(config) == 50, 120, what="50 results")
        # the same content again under other names, and one DICOM re-sent in other bytes (same SOP UID)
        for src in radiographs[:5]:
            drop(src, hot, name=f"again-{src.name}")
        resent = next(p for p in radiographs if p.suffix == ".dcm")
        import pydicom

        ds = pydicom.dcmread(resent)
        ds.ImageComments = "re-sent by the modality"
        ds.save_as(hot / "resent.dcm")
        wait_for(lambda: not any(hot.iterdir()), 30, what="the hot folder to empty")
        time.sleep(1.0)
        assert worker.alive()
        assert worker.stop() == 0
    counts = store_counts(config)
    assert counts == {"queued": 0, "processing": 0, "done": 50, "failed": 0}
    results = all_results(kiosk_client(config))
    assert len(results) == 50
    assert sorted(r["file"] for r in results) == sorted(p.name for p in radiographs)
    assert len({r["id"] for r in results}) == 50
    assert all(r["status"] == "done" and len(r["sides"]) == 2 for r in results)
    health = kiosk_client(config).get("/api/health").get_json()
    assert health["counts"]["duplicates"] == 6


# -- crash safety ----------------------------------------------------------------------------------
@pytest.mark.heavy
def test_sigkill_five_times_loses_and_duplicates_nothing(tmp_path, small_bundle, radiographs):
    config = write_config(tmp_path, small_bundle, settle_s=0.2)
    hot, data = tmp_path / "hot", DataDir(tmp_path / "data")
    inputs = radiographs[:30]
    for src in inputs:
        drop(src, hot)
    worker = WorkerProcess(config)
    rng = random.Random(0)
    for _ in range(5):
        worker.start()
        before = finished(config)
        wait_for(lambda: finished(config) >= before + 2, 60, interval=0.02, what="progress")
        time.sleep(rng.uniform(0.0, 0.08))  # somewhere inside an image: decode, inference, overlay, JSON...
        worker.kill()
    worker.start()
    wait_for(lambda: finished(config) == len(inputs), 120, what="every input finished")
    assert worker.stop() == 0
    assert store_counts(config) == {"queued": 0, "processing": 0, "done": len(inputs), "failed": 0}
    results = all_results(kiosk_client(config))
    assert sorted(r["file"] for r in results) == sorted(p.name for p in inputs)
    for item in results:
        record = json.loads(data.result_json(item["id"]).read_text())
        assert record["id"] == item["id"] and record["status"] == "done"
        for png in (data.overlay(item["id"]), data.image(item["id"])):
            with Image.open(png) as im:
                im.load()
    assert len(list(data.results.glob("*.json"))) == len(inputs)
    assert len(list(data.results.glob("*.overlay.jpg"))) == len(inputs)
    assert not [p for p in data.results.iterdir() if p.name.startswith(".")]
    assert not list(data.incoming.iterdir()) and not any(hot.iterdir())
    assert len(list(data.processed.iterdir())) == len(inputs)
    assert worker.text().count("were being read when the worker stopped") >= 1


# -- hostile and broken inputs -------------------------------------------------------------------------
def make_bad_corpus(folder: Path, radiographs: list[Path]) -> tuple[dict[str, str], list[str]]:
    """name -> what is wrong (all must be quarantined), and the names that must be read."""
    import pydicom
    from pydicom.uid import generate_uid

    from hipcad.runtime.synth import make_phantom, write_phantom

    folder.mkdir()
    explicit = write_phantom(make_phantom(seed=3, index=1, size=(640, 480)), folder, name="base.dcm", fmt="dcm-explicit").path
    jpeg = next(p for p in radiographs if p.suffix == ".jpg")
    bad = {}

    def put(name: str, data: bytes, why: str) -> None:
        (folder / name).write_bytes(data)
        bad[name] = why

    def dicom(**tags) -> bytes:
        """The base DICOM with a new SOP Instance UID (else it would be a duplicate) and ``tags``."""
        ds = pydicom.dcmread(explicit)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for key, value in tags.items():
            setattr(ds, key, value)
        buffer = io.BytesIO()
        ds.save_as(buffer)
        return buffer.getvalue()

    put("empty.dcm", b"", "empty")
    raw = dicom()
    put("truncated.dcm", raw[: len(raw) // 3], "truncated DICOM")
    put("truncated.jpg", jpeg.read_bytes()[:2000], "truncated JPEG")
    corrupt = bytearray(dicom())
    corrupt[300:1200] = os.urandom(900)
    put("corrupt.dcm", bytes(corrupt), "corrupt header")
    put("notes.txt", b"this is not a radiograph\n" * 20, "not an image")
    put(HOSTILE_FILE, b"<html>" + os.urandom(500), "hostile file name, junk content")
    put("huge.dcm", dicom(Rows=60000, Columns=60000), "declares 3.6 gigapixels")
    raw = dicom(PatientName=HOSTILE_NAME, SOPInstanceUID=HOSTILE_UID + ".broken")
    put("hostile-truncated.dcm", raw[: len(raw) - 5000], "hostile strings and truncated pixels")
    (folder.parent / "hostile-complete.dcm").write_bytes(raw)  # the same image re-sent whole: must be read
    (folder / "hostile-valid.dcm").write_bytes(dicom(PatientName=HOSTILE_NAME, PatientID='"><img src=x onerror=alert(2)>',
                                                     SOPInstanceUID=HOSTILE_UID, StudyInstanceUID=HOSTILE_UID))
    explicit.unlink()
    return bad, ["hostile-valid.dcm"]


def test_bad_inputs_are_quarantined_and_shown_escaped(tmp_path, small_bundle, radiographs):
    config = write_config(tmp_path, small_bundle)
    hot, data = tmp_path / "hot", DataDir(tmp_path / "data")
    bad, good = make_bad_corpus(tmp_path / "corpus", radiographs)
    (tmp_path / "outside.txt").write_text("secret")
    before_outside = {p for p in tmp_path.rglob("*") if "data" not in p.relative_to(tmp_path).parts}
    with WorkerProcess(config) as worker:
        for path in sorted((tmp_path / "corpus").iterdir()):
            drop(path, hot)
        os.symlink(tmp_path / "outside.txt", hot / "link.dcm")  # never followed, never moved
        wait_for(lambda: finished(config) == len(bad) + len(good), 60, what="every input finished")
        drop(radiographs[0], hot)  # still reading after all that
        drop(tmp_path / "hostile-complete.dcm", hot)
        wait_for(lambda: finished(config) == len(bad) + len(good) + 2, 60, what="good files after the bad ones")
        assert worker.alive()
        assert worker.stop() == 0
        log_text = worker.text()
    client = kiosk_client(config)
    results = {r["file"]: r for r in all_results(client)}
    for name, why in bad.items():
        item = results[name]
        assert item["status"] == "failed" and item["error"], (name, why)
        row_sha = json.loads(data.result_json(item["id"]).read_text())["sha256"]
        assert (data.quarantine / row_sha).is_file()
        assert (data.quarantine / f"{row_sha}.reason.txt").read_text().startswith(item["error"])
    assert "megapixels" in results["huge.dcm"]["error"] or "largest side" in results["huge.dcm"]["error"]
    assert results["empty.dcm"]["error"].startswith("file is empty")
    valid = results["hostile-valid.dcm"]
    assert valid["status"] == "done" and valid["sop_instance_uid"] == HOSTILE_UID
    assert results[radiographs[0].name]["status"] == "done"
    assert results["hostile-complete.dcm"]["status"] == "done"  # same SOP UID as a failed file: read again
    # the kiosk: failures shown as failures, every hostile string escaped
    pages = ["/", *(f"/study/{r['id']}" for r in results.values())]
    for url in pages + ["/api/results", *(f"/api/results/{r['id']}" for r in results.values())]:
        response = client.get(url)
        assert response.status_code == 200, url
        body = response.get_data(as_text=True)
        assert "<script>" not in body and "<img src=x" not in body, url
    study = client.get(f"/study/{valid['id']}").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in study
    failed_page = client.get(f"/study/{results[HOSTILE_FILE]['id']}").get_data(as_text=True)
    assert "COULD NOT READ THIS FILE" in failed_page and "&lt;script&gt;alert(3).dcm" in failed_page
    # nothing was created outside the data folder, and nothing there is named after a DICOM value
    after_outside = {p for p in tmp_path.rglob("*") if "data" not in p.relative_to(tmp_path).parts}
    assert after_outside - before_outside == {hot / "link.dcm", tmp_path / "worker.log"}
    assert (hot / "link.dcm").is_symlink() and (tmp_path / "outside.txt").read_text() == "secret"
    for path in (tmp_path / "data").rglob("*"):
        assert "passwd" not in path.name and "script" not in path.name
    # patient identity never reaches the log
    assert "alert(" not in log_text and "PHANTOM" not in log_text and "SYN0" not in log_text


# -- life cycle under systemd ---------------------------------------------------------------------------
def test_sd_notify_ready_watchdog_and_graceful_sigterm(tmp_path, small_bundle, radiographs):
    config = write_config(tmp_path, small_bundle)
    name = f"hipcad-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(30)
    env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000"}
    messages: list[str] = []

    def until(text: str) -> None:
        while not any(text in m for m in messages):
            messages.append(sock.recv(4096).decode())

    with WorkerProcess(config, env=env) as worker:
        until("READY=1")
        until("WATCHDOG=1")
        for src in radiographs[:8]:
            drop(src, tmp_path / "hot")
        wait_for(lambda: store_counts(config)["processing"] == 1, 30, interval=0.01, what="an image being read")
        assert worker.stop() == 0
        until("STOPPING=1")
    counts = store_counts(config)
    assert counts["processing"] == 0 and counts["done"] >= 1  # the image being read was finished
    assert "stopping: finishing the current image" in worker.text()
    sock.close()


class FailingGpuBackend:
    """Stands in for a TensorRT backend whose GPU fails at run time."""

    name, device, precision, fallback_reason, load_seconds = "tensorrt", "CUDA:0 (simulated)", "fp16", None, 0.1

    def __init__(self) -> None:
        self.calls = 0

    def infer(self, batch):
        self.calls += 1
        raise HipcadError("CUDA error: an illegal memory access was encountered (simulated)")

    def deactivate(self) -> None:
        pass


def test_backend_failure_at_run_time_falls_back_and_keeps_reading(tmp_path, small_bundle, radiographs):
    config = load_config(write_config(tmp_path, small_bundle, backend="auto"), environ={})
    failing = FailingGpuBackend()
    opened = []

    def opener(name, bundle, **options):
        opened.append(name)
        return failing if name == "auto" else open_backend(name, bundle, **options)

    with worker_in_thread(config, backend_opener=opener):
        for src in radiographs[:3]:
            drop(src, config.hot_folder)
        wait_for(lambda: finished(tmp_path / "hipcad.toml") == 3, 60, what="3 results")
    assert opened == ["auto", "onnxruntime"] and failing.calls == 1
    assert store_counts(tmp_path / "hipcad.toml")["done"] == 3
    health = kiosk_client(tmp_path / "hipcad.toml").get("/api/health").get_json()
    assert health["backend"]["name"] == "onnxruntime"
    assert "tensorrt failed at run time" in health["backend"]["runtime_fallback"]
    assert health["counts"]["backend_fallbacks"] == 1 and len(health["backend"]["fallbacks"]) == 1
    page = kiosk_client(tmp_path / "hipcad.toml").get("/").get_data(as_text=True)
    assert "GPU inference failed" in page


def test_polling_observer_and_disk_guard(tmp_path, small_bundle, radiographs):
    config = load_config(write_config(tmp_path, small_bundle, polling=True, poll_interval_s=0.3), environ={})
    with worker_in_thread(config) as worker:
        worker.disk_check_s = 0.2
        drop(radiographs[0], config.hot_folder)
        wait_for(lambda: finished(tmp_path / "hipcad.toml") == 1, 30, what="a result via polling")
        worker.config.min_free_mb = 10**9  # the disk guard trips: files stay where they are
        wait_for(lambda: not worker.accepting, 10, what="the disk guard")
        drop(radiographs[1], config.hot_folder)
        wait_for(lambda: kiosk_client(tmp_path / "hipcad.toml").get("/api/health").get_json()["worker"]["accepting"] is False,
                 10, what="health to report the disk guard")
        time.sleep(1.0)
        assert (config.hot_folder / radiographs[1].name).exists()
        page = kiosk_client(tmp_path / "hipcad.toml").get("/").get_data(as_text=True)
        assert "DISK NEARLY FULL" in page
        worker.config.min_free_mb = 1
        wait_for(lambda: finished(tmp_path / "hipcad.toml") == 2, 30, what="reading to resume")


def test_retention_deletes_old_inputs_and_results(tmp_path):
    from hipcad.appliance.worker.intake import enforce_retention

    data = DataDir(tmp_path / "data").create()
    store = Store(data.root / "db.sqlite3")
    ids = []
    for n, age_days in enumerate((40, 1)):
        sha = f"{n:064x}"
        item_id = store.enqueue(sha, None, f"f{n}.dcm", 10)
        store.db.execute("UPDATE items SET received_at = ? WHERE id = ?", (time.time() - age_days * 86400, item_id))
        store.finish(item_id, "done", result={"id": item_id})
        for path in (*data.result_files(item_id), data.processed / sha):
            path.write_bytes(b"x")
        ids.append((item_id, sha))
    assert enforce_retention(store, data, 30) == 1
    (old_id, old_sha), (new_id, new_sha) = ids
    assert store.get(old_id) is None and store.get(new_id) is not None
    assert not data.result_json(old_id).exists() and not (data.processed / old_sha).exists()
    # every result file goes, including the .png overlays of versions before JPEG overlays
    assert not any(path.exists() for path in data.result_files(old_id))
    assert data.result_json(new_id).exists() and (data.processed / new_sha).exists()
    assert enforce_retention(store, data, 0) == 0  # 0 keeps everything


def test_a_crash_between_spooling_and_queueing_keeps_the_file_name(tmp_path):
    """The worker killed after admit moved a file into the spool and before it wrote the queue row
    (the state admit leaves there, made by hand): reconcile queues it under the name it came with."""
    from hipcad.appliance.worker.intake import RECOVERED_NAME, reconcile

    data = DataDir(tmp_path / "data").create()
    store = Store(data.root / "db.sqlite3")
    named, unnamed, orphan = "a" * 64, "b" * 64, "c" * 64
    for sha in (named, unnamed):
        data.spool(sha).write_bytes(sha.encode())
    data.received_name(named).write_bytes("hüft <1>.jpg".encode())
    data.received_name(orphan).write_bytes(b"still in the hot folder.jpg")  # killed before its move
    reconcile(store, data)
    assert store.find(named)["name"] == "hüft <1>.jpg"
    assert store.find(unnamed)["name"] == RECOVERED_NAME  # spooled by a version that kept no name
    assert store.find(orphan) is None
    assert sorted(p.name for p in data.incoming.iterdir()) == [named, unnamed]


def test_results_of_earlier_versions_keep_their_png_files(tmp_path):
    data = DataDir(tmp_path / "data").create()
    assert data.overlay(7).name == "7.overlay.jpg" and data.image(7).name == "7.image.jpg"
    (data.results / "7.overlay.png").write_bytes(b"x")
    assert data.overlay(7).name == "7.overlay.png" and data.image(7).name == "7.image.jpg"
    (data.results / "7.overlay.jpg").write_bytes(b"x")
    assert data.overlay(7).name == "7.overlay.jpg"


# -- hipcad demo ------------------------------------------------------------------------------------
def test_demo_runs_worker_and_kiosk_until_sigterm(tmp_path, small_bundle):
    import signal
    import urllib.request

    with demo_process(tmp_path, small_bundle, 3) as proc:
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert lines[0].startswith("kiosk: http://127.0.0.1:") and lines[1].startswith("hot folder: "), lines
        url = lines[0].split(" ", 1)[1]

        def results():
            with urllib.request.urlopen(url + "api/results") as response:
                return json.load(response)["results"]

        done = wait_for(lambda: len(results()) == 3 and results(), 90, interval=0.5, what="3 demo results")
        assert all(r["status"] == "done" for r in done)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert "stopped" in proc.stderr.read()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_demo_without_a_model_says_so(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "hipcad.appliance.demo", "--model", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot load the model" in proc.stderr and "Traceback" not in proc.stderr


# -- systemd watchdog and notify socket ----------------------------------------------------------------
def test_watchdog_ping_only_while_observer_and_inference_thread_live(tmp_path):
    from hipcad.appliance.worker.sdnotify import Notifier

    worker = Worker(load_config(None, environ={}, hot_folder=tmp_path / "hot", data_dir=tmp_path / "data"))

    class Observer:
        def __init__(self, alive: bool) -> None:
            self.alive = lambda: alive

    release = threading.Event()
    worker._thread = threading.Thread(target=release.wait, daemon=True)
    worker._thread.start()
    worker.reader = Reader(worker.config, worker.data, load_bundle(DEFAULT_BUNDLE), {}, None)
    assert worker._healthy(Observer(True))
    assert not worker._healthy(Observer(False))
    worker.reader.beat = time.monotonic() - worker.config.watchdog_stale_s - 1  # inference thread stuck
    assert not worker._healthy(Observer(True))
    worker.reader.stage = "decode"  # ... unless a file is being decoded: that may take decode_timeout_s more
    assert worker._healthy(Observer(True))
    worker.reader.beat -= worker.config.decode_timeout_s
    assert not worker._healthy(Observer(True))
    worker.reader.stage, worker.reader.beat = "idle", time.monotonic()
    release.set()
    worker._thread.join()
    assert not worker._healthy(Observer(True))  # inference thread gone

    assert Notifier({"NOTIFY_SOCKET": "@abc"}).address == "\0abc"
    assert Notifier({"NOTIFY_SOCKET": "/run/x"}).address == "/run/x"
    assert not Notifier({}).enabled and Notifier({}).send("READY=1") is False
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
