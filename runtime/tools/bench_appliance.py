"""``hipcad bench --appliance``: what the person in the X-ray room waits for, from the moment the
radiograph is complete (renamed into the hot folder, closed after writing there, or its C-STORE
answered) to the moment a real browser showing the kiosk displays the verdict.

It starts the box as systemd would (``hipcad worker`` with its DICOM listener, and two ``hipcad
kiosk`` on the same store: one pushing news to the page, one with push turned off so that the page
polls every 2 s as before), opens each kiosk in Chromium (Playwright), and drops radiographs one at
a time, each kind by each delivery in turn. Every drop is watched by both pages at once: the two
figures share the worker's part and differ only in how the page learnt of the result. The stages
in between come from the worker's result record (``stamps``, ``timings_ms``) and the page.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.tools.bench import (
    STAGES,
    identity_lines,
    load_average,
    machine,
    missing_modules,
    model_identity,
    pct,
    positive_int,
)
from hipcad.runtime.tools.bench_drops import DELIVERIES, WATCH_JS, Source, deliver

NEEDS = {"flask": "flask", "cheroot": "cheroot", "watchdog": "watchdog", "playwright": "playwright"}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
READING = STAGES[:-1]  # the worker's reading of one file, stage by stage (bench's stages less the total)
WORKER_STAGES = ("detect_settle", "intake", "queue", "decode", "preprocess", "inference", "postprocess", "overlay",
                 "read_other", "store")
PAGES = ("push", "poll")
DICOM_AE = "HIPCAD"
POLL_PERIOD_S = 2.0  # the live page's polling period (kiosk.js PERIOD_MS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hipcad bench --appliance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", metavar="BUNDLE", help="model bundle (default: the bundled demo model)")
    parser.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "tensorrt"))
    parser.add_argument("--images", type=positive_int, default=5, help="timed drops per input kind and delivery (default 5)")
    parser.add_argument("--deliveries", default=",".join(DELIVERIES),
                        help="comma-separated, of rename (written beside, renamed in), close (written in place), "
                             "cstore (DICOM C-STORE to the worker's listener; DICOM inputs only); default all")
    parser.add_argument("--settle", type=float, default=1.0, metavar="S", help="the worker's settle_s (default 1.0, its default)")
    parser.add_argument("--inputs", nargs="+", metavar="FILE", help="drop these radiographs (each its own kind) instead of "
                        "the five of `hipcad bench` made in --workdir")
    parser.add_argument("--workdir", default=".cache/bench", help="where the benchmark radiographs are made and kept")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium", help="the browser")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S", help="longest wait for one verdict (default 120)")
    parser.add_argument("--keep", metavar="DIR", help="run the box in DIR and keep it (logs, store) instead of a temporary folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    deliveries = [d.strip() for d in args.deliveries.split(",") if d.strip()]
    unknown = sorted(set(deliveries) - set(DELIVERIES))
    if unknown or not deliveries:
        parser.error(f"--deliveries: choose from {', '.join(DELIVERIES)} (not {', '.join(unknown) or 'nothing'})")
    missing = missing_modules({**NEEDS, **({"pynetdicom": "pynetdicom"} if "cstore" in deliveries else {})})
    if missing:
        print(f"hipcad bench --appliance needs {', '.join(missing)}, not installed here "
              f"(pip install {' '.join(missing)}; the box's part is pip install 'hipcad[appliance]')", file=sys.stderr)
        return 2
    if not Path(args.chromium).is_file():
        print(f"hipcad bench --appliance needs Chromium: {args.chromium} not found (Debian package chromium, or --chromium PATH)",
              file=sys.stderr)
        return 2
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hipcad-bench-appliance-"))
    previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM too stops the box and the browser first
    try:
        report = run(args, deliveries, root)
    except KeyboardInterrupt:
        print("hipcad bench: interrupted", file=sys.stderr)
        return 130
    except (HipcadError, OSError, ValueError, RuntimeError) as err:
        print(f"hipcad bench --appliance: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else summary(report))
    return 1 if report["failed_drops"] else 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run(args, deliveries: list[str], root: Path) -> dict:
    from hipcad.runtime.model.bundle import load_bundle
    from hipcad.runtime.tools.bench_inputs import make_inputs, own_inputs

    bundle = load_bundle(args.model)
    inputs = own_inputs(args.inputs) if args.inputs else make_inputs(Path(args.workdir))
    sources = {name: Source(name, path) for name, path in inputs.items() if isinstance(path, Path)}
    if not sources:
        raise ValueError("no input to drop: " + "; ".join(str(v) for v in inputs.values()))
    pairs = [(how, name) for how in deliveries for name, src in sources.items() if how != "cstore" or src.format == "dicom"]
    if not pairs:
        raise ValueError("--deliveries cstore needs DICOM inputs")
    with Box(root, bundle.path, args, dicom="cstore" in deliveries) as box, Screens(box, args.chromium) as screens:
        report = {"what": "drop -> verdict on the kiosk's screen (Chromium), one drop at a time", "machine": machine(),
                  "model": model_identity(bundle, box.health["backend"].get("name"), box.health["backend"].get("device")),
                  "settle_s": args.settle, "inputs": {k: str(v) for k, v in inputs.items()}, "drops": []}
        serial = 0
        for name, src in sources.items():  # warm-up, one per kind: first-call costs of each codec and page
            serial += 1
            drop(box, screens, "rename", src, serial, args.timeout)
        # a pause of a random fraction of the polling period before each drop: the drops would
        # otherwise fall just after a poll (the last verdict arrived with one), the worst case
        phase = random.Random(0)
        for _ in range(args.images):
            for how, name in pairs:
                serial += 1
                time.sleep(phase.uniform(0.0, POLL_PERIOD_S))
                report["drops"].append(drop(box, screens, how, sources[name], serial, args.timeout))
        report["machine"]["load_average_at_end"] = load_average()
    report["failed_drops"] = [d for d in report["drops"] if d.get("error")]
    report["results"] = aggregate(report["drops"], pairs)
    return report


def drop(box: "Box", screens: "Screens", how: str, source: Source, serial: int, timeout_s: float) -> dict:
    last = box.newest_id()
    screens.arm(last, timeout_s)
    complete, key, extra = deliver(how, source, serial, box.hot, box.dicom)
    marks = screens.wait()
    entry = {"delivery": how, "kind": source.name, **extra}
    ids = {m.get("id") for m in marks.values()}
    if None in ids or len(ids) != 1:
        return {**entry, "error": f"the pages showed different studies: {marks}"}
    item_id = ids.pop()
    item = box.get(f"/api/results/{item_id}")
    name = box.file_name(item_id)
    if key not in (name, item.get("sop_instance_uid")):
        return {**entry, "error": f"the screen shows {name}, not the radiograph just sent"}
    if item["status"] != "done":
        return {**entry, "error": f"the worker could not read it: {item.get('error')}"}
    return {**entry, **stages(complete, item, marks)}


def stages(complete: float, item: dict, marks: dict) -> dict:
    """Where the time went, in ms, from the worker's stamps and timings and the pages' marks."""
    st, t = item["stamps"], item["timings_ms"]

    def ms(a, b):
        return round((b - a) * 1000.0, 1) if a is not None and b is not None else None

    read = ms(st["claimed_at"], st["read_at"])
    out = {"detect_settle": ms(complete, st.get("ready_at")), "intake": ms(st.get("ready_at"), st["received_at"]),
           "queue": ms(st["received_at"], st["claimed_at"]),
           **{k: t.get(k) for k in READING},
           "read_other": round(read - sum(t.get(k, 0.0) for k in READING), 1),
           "store": ms(st["read_at"], st["finished_at"]), "worker_ms": ms(complete, st["finished_at"])}
    finished_ms = st["finished_at"] * 1000.0
    for page, m in marks.items():
        news = next((n for n in m["news"] if n["t"] >= finished_ms), None)
        start = min(news["t"], m["dom"]) if news else None
        out[page] = {"screen_ms": round(m["painted"] - complete * 1000.0, 1),
                     "overlay_image_ms": round(m["image"] - complete * 1000.0, 1) if m.get("image") else None,
                     "push": round(start - finished_ms, 1) if start else None,
                     "render": round(m["painted"] - (start or finished_ms), 1), "via": news["via"] if news else None}
    return out


def aggregate(drops: list[dict], pairs: list[tuple[str, str]]) -> dict:
    """p50/p95 per delivery and kind, per kind, and over all drops."""
    good = [d for d in drops if not d.get("error")]
    groups = {f"{how}/{name}": [d for d in good if (d["delivery"], d["kind"]) == (how, name)] for how, name in pairs}
    groups.update({f"*/{name}": [d for d in good if d["kind"] == name] for name in dict.fromkeys(n for _, n in pairs)})
    groups["all"] = good
    out = {}
    for key, ds in groups.items():
        if not ds:
            continue
        row = {"n": len(ds)}
        for page in PAGES:
            row[page] = {k: pct([d[page][k] for d in ds if d[page][k] is not None])
                         for k in ("screen_ms", "overlay_image_ms", "push", "render")}
            row[page]["news_via"] = dict(Counter(d[page]["via"] or "in a page fetch already under way" for d in ds))
        row["stages_ms"] = {k: pct([d[k] for d in ds if d.get(k) is not None]) for k in (*WORKER_STAGES, "worker_ms", "cstore_ms")
                            if any(d.get(k) is not None for d in ds)}
        out[key] = row
    return out


def summary(r: dict) -> str:
    lines = [*identity_lines(r["model"], r["machine"]), f"worker settle_s {r['settle_s']}",
             "drop -> verdict on screen, ms          n   push p50   p95 | poll p50   p95 | worker p50  image p50"]
    for key, row in r["results"].items():
        push, poll = row["push"]["screen_ms"], row["poll"]["screen_ms"]
        lines.append(f"  {key:<36} {row['n']:>3} {_f(push['p50'])} {_f(push['p95'])} | {_f(poll['p50'])} {_f(poll['p95'])} | "
                     f"{_f(row['stages_ms']['worker_ms']['p50'], 10)} {_f(row['push']['overlay_image_ms']['p50'], 10)}")
    every = r["results"].get("all")
    if every:
        lines.append("where the time goes (all drops, p50 / p95 ms; push page):")
        for k, v in every["stages_ms"].items():
            lines.append(f"  {k:<14} {_f(v['p50'])} {_f(v['p95'])}")
        for k in ("push", "render"):
            lines.append(f"  {k:<14} {_f(every['push'][k]['p50'])} {_f(every['push'][k]['p95'])}   "
                         f"(polling page: {_f(every['poll'][k]['p50'])} {_f(every['poll'][k]['p95'])})")
    for d in r["failed_drops"]:
        lines.append(f"FAILED {d['delivery']}/{d['kind']}: {d['error']}")
    return "\n".join(lines)


def _f(value, width: int = 8) -> str:
    return f"{value:>{width}.0f}" if value is not None else f"{'-':>{width}}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Box:
    """The worker and two kiosks (push, poll) as their own processes on one store, on loopback."""

    def __init__(self, root: Path, model: Path, args, dicom: bool) -> None:
        self.root, self.hot = root, root / "hot"
        self.ports = {"push": free_port(), "poll": free_port()}
        self.dicom = ("127.0.0.1", free_port(), DICOM_AE) if dicom else None
        values = {"hot_folder": str(self.hot), "data_dir": str(root / "data"), "model": str(model), "backend": args.backend,
                  "settle_s": args.settle, "min_free_mb": 10, "kiosk_secret_key": secrets.token_hex(16),
                  "dicom_port": self.dicom[1] if dicom else 0, "dicom_bind": "127.0.0.1", "dicom_ae_title": DICOM_AE,
                  "dicom_allowed_hosts": ["127.0.0.1"], "kiosk_allow_unauthenticated_loopback": True}
        self.config = root / "hipcad.toml"
        self.timeout = args.timeout
        self.procs: list[subprocess.Popen] = []
        self.health: dict = {}
        root.mkdir(parents=True, exist_ok=True)
        self.hot.mkdir(exist_ok=True)
        self.config.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))

    def __enter__(self) -> "Box":
        try:
            self._start("worker", {})
            for page, port in self.ports.items():
                self._start(f"kiosk-{page}", {"HIPCAD_KIOSK_PORT": str(port),
                                              "HIPCAD_KIOSK_PUSH_STREAMS": "4" if page == "push" else "0"})
            deadline = time.monotonic() + max(self.timeout, 180.0)
            while time.monotonic() < deadline:
                self._check_alive()
                health = self._health()
                if health and health["worker"]["up"] and (not self.dicom or health["dicom"]["listener"]["up"]):
                    self.health = health
                    return self
                time.sleep(0.3)
            raise RuntimeError("the box did not come up within "
                               f"{max(self.timeout, 180.0):.0f} s (keep its logs with --keep DIR)")
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _start(self, name: str, env: dict) -> None:
        module = "worker" if name == "worker" else "kiosk"
        with open(self.root / f"{name}.log", "ab") as log:
            self.procs.append(subprocess.Popen([sys.executable, "-m", f"hipcad.appliance.{module}", "--config", str(self.config)],
                                               stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}))

    def _check_alive(self) -> None:
        for proc, name in zip(self.procs, ("worker", "kiosk-push", "kiosk-poll")):
            if proc.poll() is not None:
                log = (self.root / f"{name}.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"{name} stopped: {' / '.join(log)}")

    def _health(self) -> dict | None:
        try:
            return self.get("/api/health")
        except urllib.error.HTTPError as err:
            return json.loads(err.read()) if err.code == 503 else None
        except OSError:
            return None

    def url(self, page: str) -> str:
        return f"http://127.0.0.1:{self.ports[page]}"

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url("push") + path, timeout=30) as response:
            return json.loads(response.read())

    def file_name(self, item_id: int) -> str | None:
        """The name the item arrived with, from the box's store (the kiosk shows file names to
        signed-in readers only, and this bench's kiosks open loopback without sign-in)."""
        from hipcad.appliance.config import load_config
        from hipcad.appliance.storage.store import Store

        store = Store(load_config(self.config, environ={}).db_path)
        try:
            row = store.get(item_id)
            return row["name"] if row is not None else None
        finally:
            store.close()

    def newest_id(self) -> int:
        self._check_alive()
        rows = self.get("/api/results?limit=1")["results"]
        return rows[0]["id"] if rows else 0


class Screens:
    """One Chromium, one page per kiosk, each in its own browser context."""

    def __init__(self, box: Box, chromium: str) -> None:
        self.box, self.chromium = box, chromium

    def __enter__(self) -> "Screens":
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            self.browser = self._pw.chromium.launch(executable_path=self.chromium, args=CHROMIUM_ARGS, headless=True)
            self.pages = {}
            for page in PAGES:
                self.pages[page] = self.browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
                self.pages[page].goto(self.box.url(page) + "/")
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if getattr(self, "browser", None) is not None:
                self.browser.close()
        finally:
            self._pw.stop()

    def arm(self, after_id: int, timeout_s: float) -> None:
        for page in self.pages.values():
            page.evaluate(WATCH_JS, [after_id, int(timeout_s * 1000)])

    def wait(self) -> dict:
        from playwright.sync_api import Error as PlaywrightError

        try:
            return {name: page.evaluate("() => window.__hipcadBench") for name, page in self.pages.items()}
        except PlaywrightError as err:
            raise RuntimeError(f"the screen: {str(err).splitlines()[0]}") from None
