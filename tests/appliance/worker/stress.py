"""The worker stressed as a hospital would (issue 18's figures), with a real ``hipcad worker`` process.

    python -m tests.appliance.worker.stress sigkill [--images 200] [--kills 20] [--model BUNDLE]
        a stream of radiographs into the hot folder while the worker is SIGKILLed and restarted at
        random moments (as systemd would): afterwards exactly one result per input, every name kept,
        no half-written file anywhere, nothing left queued
    python -m tests.appliance.worker.stress burst [--files 2000] [--model BUNDLE]
        a burst of files written at once, interleaved in small writes to flood the kernel's inotify
        queue (an overflow makes the worker rescan), a tenth of them duplicates: every file
        accounted for, duplicates recognised, the systemd watchdog pinged throughout, memory and
        file descriptors flat

Prints one JSON object; exit status 1 when a check fails. Not part of the suite (minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.appliance.support import WorkerProcess, finished, store_counts, wait_for, write_config


def radiographs(folder: Path, count: int, seed: int, formats: str = "dicom,jpeg") -> list[Path]:
    from hipcad.runtime.synth import generate

    records = generate(folder, count, seed=seed, size=(640, 480), formats=formats, progress=False)
    return [r.path for r in records]


def store_rows(config: Path) -> list[dict]:
    from hipcad.appliance.config import load_config
    from hipcad.appliance.storage.store import Store

    store = Store(load_config(config, environ={}).db_path)
    try:
        return [dict(r) for r in store.db.execute("SELECT id, sha256, name, status, attempts FROM items")]
    finally:
        store.close()


def leftovers(data: Path) -> dict:
    """Files that must not exist once everything is read: half-written temporaries, spool, quarantine."""
    return {"temporaries": [p.name for p in data.rglob(".*") if p.is_file()],
            "incoming": [p.name for p in (data / "incoming").iterdir()],
            "quarantine": [p.name for p in (data / "quarantine").iterdir()] if (data / "quarantine").exists() else []}


def sigkill(args, root: Path) -> dict:
    inputs = radiographs(root / "inputs", args.images, seed=11)
    config = write_config(root, args.model, settle_s=0.5)
    hot, data = root / "hot", root / "data"
    worker = WorkerProcess(config).start()
    wait_for(lambda: "watching" in worker.text(), 120, what="the worker to start")
    rng = random.Random(args.seed)
    fed = threading.Event()

    def feed():
        for src in inputs:
            shutil.copyfile(src, hot / src.name)
            time.sleep(rng.uniform(0.0, 2 * args.interval))
        fed.set()

    feeder = threading.Thread(target=feed)
    start = time.monotonic()
    feeder.start()
    span = args.images * args.interval
    kills, mark = 0, 0
    for at in sorted(rng.uniform(1.0, span) for _ in range(args.kills)):
        time.sleep(max(0.0, start + at - time.monotonic()))
        worker.kill()
        kills += 1
        mark = len(worker.text())
        worker.start()  # systemd's Restart=on-failure, without the delay
    feeder.join()
    wait_for(lambda: finished(config) == args.images, 1800, interval=1.0, what="every input read")
    # the last one started up (a SIGTERM before its handler is installed is not a graceful stop)
    wait_for(lambda: "watching" in worker.text()[mark:], 120, what="the last start to complete")
    code = worker.stop()
    rows = store_rows(config)
    left = leftovers(data)
    results = sorted(p.name for p in (data / "results").glob("*.json"))
    checks = {
        "exit_status_0": code == 0,
        "one_result_per_input": len(rows) == args.images and len(results) == args.images,
        "all_done": store_counts(config) == {"queued": 0, "processing": 0, "done": args.images, "failed": 0},
        "every_name_kept": sorted(r["name"] for r in rows) == sorted(p.name for p in inputs),
        "no_half_files": not left["temporaries"] and not left["incoming"],
        "nothing_quarantined": not left["quarantine"],
        "hot_folder_empty": not any(hot.iterdir()),
        "processed": len(list((data / "processed").iterdir())) == args.images,
    }
    return {"test": "sigkill", "images": args.images, "kills": kills, "exit_status": code, "seconds": round(time.monotonic() - start, 1),
            "starts_completed": worker.text().count("watching "), "max_attempts": max(r["attempts"] for r in rows),
            "checks": checks, "left": left}


def burst(args, root: Path) -> dict:
    distinct = args.files - args.files // 10
    sources = radiographs(root / "inputs", 20, seed=12, formats="jpeg")
    config = write_config(root, args.model, settle_s=0.5, rescan_interval_s=3600)
    hot = root / "hot"
    name = f"hipcad-stress-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(1.0)
    pings: list[float] = []
    stop = threading.Event()

    def listen():
        while not stop.is_set():
            try:
                if b"WATCHDOG=1" in sock.recv(4096):
                    pings.append(time.monotonic())
            except socket.timeout:
                pass

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    worker = WorkerProcess(config, env={"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "2000000"}).start()
    wait_for(lambda: pings, 120, what="the first watchdog ping")
    samples = []

    def sample():
        pid = worker.proc.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        samples.append({"rss_mb": rss // 1024, "fds": len(os.listdir(f"/proc/{pid}/fd")),
                        "threads": int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))})

    sample()
    # distinct contents: a JPEG with bytes of its own after its end (readers ignore them; a DICOM would
    # need its own SOP Instance UID too)
    payloads = [sources[i % len(sources)].read_bytes() + b"\0" * (i % 7) + i.to_bytes(4, "big") for i in range(distinct)]
    payloads += [payloads[i] for i in range(args.files - distinct)]  # duplicates under other names
    start = time.monotonic()
    for first in range(0, len(payloads), 500):  # 500 files open at a time, written in interleaved chunks
        batch = [(open(hot / f"b{first + i:05d}{sources[(first + i) % len(sources)].suffix}", "wb"), data)
                 for i, data in enumerate(payloads[first:first + 500])]
        for part in range(args.chunks):
            for fh, data in batch:
                step = -(-len(data) // args.chunks)
                fh.write(data[part * step:(part + 1) * step])
                fh.flush()
        for fh, _ in batch:
            fh.close()
        sample()
    written = time.monotonic()
    wait_for(lambda: not any(hot.iterdir()), 1800, interval=0.5, what="every file taken")
    taken = time.monotonic()
    sample()
    wait_for(lambda: finished(config) == distinct, 3600, interval=2.0, what="every distinct file read")
    sample()
    code = worker.stop()
    stop.set()
    window = [t for t in pings if start <= t <= taken]
    gaps = [b - a for a, b in zip(window, window[1:])]
    counts = store_counts(config)
    health = _health(config)
    checks = {
        "exit_status_0": code == 0,
        "every_distinct_file_read": counts == {"queued": 0, "processing": 0, "done": distinct, "failed": 0},
        "duplicates_recognised": health["counts"]["duplicates"] == args.files - distinct,
        "watchdog_gap_under_10_s": bool(gaps) and max(gaps) < 10.0,
    }
    return {"test": "burst", "files": args.files, "distinct": distinct,
            "inotify_overflow": "overflowed" in worker.text(), "write_s": round(written - start, 1),
            "take_s": round(taken - start, 1), "read_s": round(time.monotonic() - start, 1),
            "watchdog_pings": len(window), "longest_ping_gap_s": round(max(gaps), 2) if gaps else None,
            "samples": samples, "checks": checks}


def _health(config: Path) -> dict:
    from hipcad.appliance.config import load_config
    from hipcad.appliance.status import health
    from hipcad.appliance.storage.store import Store

    cfg = load_config(config, environ={})
    store = Store(cfg.db_path)
    try:
        return health(store, cfg)
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.appliance.worker.stress", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("test", choices=("sigkill", "burst"))
    parser.add_argument("--model", default="", help="model bundle (default: the bundled demo model)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--interval", type=float, default=0.25, help="mean seconds between two radiographs")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--chunks", type=int, default=64, help="interleaved writes per file (inotify events)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix=f"hipcad-stress-{args.test}-"))
    try:
        report = sigkill(args, root) if args.test == "sigkill" else burst(args, root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
