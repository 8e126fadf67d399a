"""``hipcad demo``: the whole box on one machine. Starts the worker and the kiosk as their own
processes (as systemd would) on the bundled demo model, with a temporary hot folder and the DICOM
listener on 127.0.0.1, then copies synthetic radiographs into the hot folder one by one. Runs
until Ctrl-C or SIGTERM, which stop both."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from hipcad.appliance.config import ConfigError, parse_destination
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.model.bundle import load_bundle


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DEMO_AE_TITLE = "HIPCAD"


def write_demo_config(path: Path, root: Path, model: Path, port: int, read_first: bool, dicom_port: int = 0,
                      pacs: list[str] | None = None) -> None:
    values = {"hot_folder": str(root / "hot"), "data_dir": str(root / "data"), "model": str(model),
              "kiosk_port": port, "settle_s": 0.5, "rescan_interval_s": 10.0, "min_free_mb": 50,
              "truth_labels": str(root / "samples"), "read_first": read_first,
              # a single-user screen on this machine: no login (the only place hipcad opens loopback)
              "kiosk_allow_unauthenticated_loopback": True,
              "dicom_port": dicom_port, "dicom_bind": "127.0.0.1", "dicom_ae_title": DEMO_AE_TITLE,
              "dicom_allowed_hosts": ["127.0.0.1", "::1"], "pacs_destinations": pacs or []}
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))


def wait_tcp(port: int, timeout: float, alive) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def wait_http(url: str, timeout: float, alive) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # it answers (503 while the worker is still loading the model)
        except OSError:
            time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hipcad demo",
        description="Run the worker and the kiosk on the demo model with a temporary hot folder and copy synthetic "
        "radiographs into it. Open the printed kiosk address; drop more files into the hot folder. Ctrl-C stops.",
    )
    parser.add_argument("--model", metavar="BUNDLE", help="model bundle (default: the bundled demo model)")
    parser.add_argument("--port", type=int, default=8080, help="kiosk port on 127.0.0.1 (0: any free port; default 8080)")
    parser.add_argument("--count", type=int, default=6, help="synthetic radiographs to copy in (default 6)")
    parser.add_argument("--dir", metavar="DIR", help="keep the hot folder and data here (default: a temporary folder)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between copied radiographs (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the synthetic radiographs")
    parser.add_argument("--read-first", action="store_true", help="reader-study mode: answer before the CAD is shown")
    parser.add_argument("--dicom-port", type=int, default=0,
                        help="port of the DICOM listener on 127.0.0.1 (AE title HIPCAD, any calling AE title from "
                             "this machine; default 0: any free port)")
    parser.add_argument("--pacs", metavar="AE@HOST:PORT", action="append", default=[],
                        help="also send the results (SC + SR) to this DICOM node (repeatable)")
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.model)
    except HipcadError as err:
        print(f"hipcad demo: cannot load the model: {err}", file=sys.stderr)
        return 2
    try:
        for destination in args.pacs:
            parse_destination(destination)
    except ConfigError as err:
        print(f"hipcad demo: {err}", file=sys.stderr)
        return 2
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="hipcad-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    dicom_port = args.dicom_port or free_port()
    config = root / "hipcad.toml"
    write_demo_config(config, root, bundle.path, port, args.read_first, dicom_port, args.pacs)
    (root / "hot").mkdir(exist_ok=True)
    print(f"model: {bundle.label}", file=sys.stderr)
    print(f"making {args.count} synthetic radiographs...", file=sys.stderr, flush=True)
    from hipcad.runtime.synth import generate

    samples = [r.path for r in generate(root / "samples", args.count, seed=args.seed, size=(1280, 1040),
                                        formats="dicom,jpeg", progress=False)]

    # a list, not an Event: a signal handler must take no lock (Event.set in a handler deadlocks
    # when the signal lands while the main thread holds the Event's lock inside wait())
    signals: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: signals.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _: signals.append(signum))
    children = [subprocess.Popen([sys.executable, "-m", f"hipcad.appliance.{name}", "--config", str(config)],
                                 stdout=subprocess.DEVNULL, start_new_session=True)
                for name in ("worker", "kiosk")]
    code = 0
    try:
        url = f"http://127.0.0.1:{port}/"
        if not wait_http(url + "api/health", 60, lambda: all(c.poll() is None for c in children) and not signals):
            if not signals:
                print("hipcad demo: the worker or the kiosk did not start (see the messages above)", file=sys.stderr)
                code = 1
            return code
        print(f"kiosk: {url}", flush=True)
        print(f"hot folder: {root / 'hot'}", flush=True)
        if wait_tcp(dicom_port, 60, lambda: all(c.poll() is None for c in children) and not signals):
            print(f"dicom: AE title {DEMO_AE_TITLE} on 127.0.0.1 port {dicom_port} "
                  f"(e.g. storescu -aec {DEMO_AE_TITLE} 127.0.0.1 {dicom_port} FILE.dcm)", flush=True)
        elif not signals:
            print("hipcad demo: the DICOM listener did not start (see the messages above)", file=sys.stderr)
        pending = list(samples)
        next_copy = time.monotonic()
        while not signals:
            if any(c.poll() is not None for c in children):
                print("hipcad demo: the worker or the kiosk stopped unexpectedly", file=sys.stderr)
                code = 1
                break
            if pending and time.monotonic() >= next_copy:
                src = pending.pop(0)
                tmp = root / "hot" / f".{src.name}.part"  # written under a hidden name, then renamed in
                shutil.copyfile(src, tmp)
                tmp.rename(root / "hot" / src.name)
                next_copy = time.monotonic() + args.interval
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
        print("hipcad demo: stopped", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
