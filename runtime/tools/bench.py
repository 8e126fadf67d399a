"""``hipcad bench``: end-to-end time per radiograph on realistic inputs, against the paper's 1.17 s
and (``--baseline``) against PyTorch eager + pytorch-grad-cam, measured the same way in one run."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hipcad.runtime.errors import HipcadError

PAPER_MS = 1170.0
STAGES = ("decode", "preprocess", "inference", "postprocess", "overlay", "total")


#: what the --baseline needs beyond hipcad's runtime: module -> what to install
BASELINE_NEEDS = {"torch": "torch", "timm": "timm", "pytorch_grad_cam": "grad-cam"}


def pct(values_ms: list[float]) -> dict:
    """p50 and p95 in ms (None for no values: a kind that was not timed has no percentiles)."""
    if len(values_ms) == 0:
        return {"p50": None, "p95": None}
    a = np.asarray(values_ms, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1)}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def missing_modules(needs: dict[str, str]) -> list[str]:
    """The pip names of the modules in ``needs`` that cannot be imported here."""
    return [pip for module, pip in needs.items() if importlib.util.find_spec(module) is None]


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 matrix-multiply throughput of this machine through numpy's BLAS, all cores, best of N."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine() -> dict:
    """What two runs must share to be compared: the host, its CPU and memory, how busy it was when
    the run started (a shared machine is noisy), the software versions."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"host": socket.gethostname(), "cpu": model, "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": _memory_gib(), "load_average_at_start": load_average(), "python": platform.python_version(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for package in ("hipcad", "onnxruntime", "numpy"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    return info


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def model_identity(bundle, backend: str | None, device: str | None) -> dict:
    """The model as a comparison needs it: name, architecture, input, precision, the ONNX file's
    sha256 (two bundles of one name may differ) and the backend that ran it."""
    return {**bundle.describe(), "onnx_sha256": bundle.onnx_sha256, "backend": backend, "device": device}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--appliance" in argv:
        from hipcad.runtime.tools.bench_appliance import main as appliance_main

        return appliance_main([a for a in argv if a != "--appliance"])
    from hipcad.runtime.backends import CHOICES
    from hipcad.runtime.tools import bench_triton

    parser = argparse.ArgumentParser(prog="hipcad bench", description=__doc__)
    parser.add_argument("--model", metavar="BUNDLE", help="model bundle (default: the bundled demo model)")
    parser.add_argument("--backend", default="auto", choices=CHOICES)
    parser.add_argument("--images", type=positive_int, default=20,
                        help="timed radiographs, cycling through the input kinds (default 20)")
    parser.add_argument("--baseline", action="store_true", help="also time PyTorch eager + pytorch-grad-cam on the same inputs")
    parser.add_argument("--baseline-images", type=positive_int, default=5, help="timed radiographs for the baseline (default 5)")
    parser.add_argument("--workdir", default=".cache/bench", help="where the benchmark radiographs are made and kept")
    parser.add_argument("--inputs", nargs="+", metavar="FILE",
                        help="time these radiographs (each its own input kind; with --triton, the ones the boxes read) "
                             "instead of the five made in --workdir")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--appliance", action="store_true",
                        help="instead: time drop -> verdict on the kiosk's screen through the running box "
                             "(worker, kiosk, a browser); see `hipcad bench --appliance --help`")
    bench_triton.add_arguments(parser)  # --triton HOST:PORT --clients N...: simulated boxes on one server
    args = parser.parse_args(argv)
    if args.triton_url:
        return bench_triton.run(args)
    try:
        return _main(args)
    except KeyboardInterrupt:
        print("hipcad bench: interrupted", file=sys.stderr)
        return 130


def _main(args) -> int:
    from hipcad.runtime.backends import open_backend
    from hipcad.runtime.inference.pipeline import Pipeline
    from hipcad.runtime.model.bundle import load_bundle
    from hipcad.runtime.tools.bench_inputs import make_inputs, own_inputs

    missing = missing_modules(BASELINE_NEEDS) if args.baseline else []
    if missing:
        print(f"hipcad bench: --baseline needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
              f"not installed (pip install {' '.join(missing)}; or run without --baseline)", file=sys.stderr)
        return 2
    try:
        inputs = own_inputs(args.inputs) if args.inputs else make_inputs(Path(args.workdir))
        t0 = time.perf_counter()
        bundle = load_bundle(args.model)
        backend = open_backend(args.backend, bundle)
    except (HipcadError, OSError, RuntimeError) as err:
        print(f"hipcad bench: {_message(err)}", file=sys.stderr)
        return 2
    load_ms = (time.perf_counter() - t0) * 1000.0
    kinds = {k: v for k, v in inputs.items() if isinstance(v, Path)}
    skipped = {k: v for k, v in inputs.items() if not isinstance(v, Path)}
    from hipcad.runtime.imaging.isolation import DecodePool

    try:
        with DecodePool(1) as decoder, tempfile.TemporaryDirectory(prefix="hipcad-bench-") as tmp:
            pipeline = Pipeline(bundle, backend, decoder=decoder)  # as the worker and predict decode: isolated
            report = _run(args, bundle, backend, pipeline, kinds, skipped, load_ms, Path(tmp))
    except (HipcadError, OSError) as err:
        print(f"hipcad bench: {_message(err)}", file=sys.stderr)
        return 1
    if report is None:
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_summary(report))
    return 0


def _message(err: Exception) -> str:
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return str(err)


def _run(args, bundle, backend, pipeline, kinds, skipped, load_ms, out: Path) -> dict | None:
    from tqdm import tqdm

    names = list(kinds)
    if not names:
        print("hipcad bench: no benchmark input could be made: " + "; ".join(skipped.values()), file=sys.stderr)
        return None
    report: dict = {"backend": backend.name, "device": backend.device, "model": model_identity(bundle, backend.name, backend.device),
                    "machine": machine(), "paper_ms": PAPER_MS, "inputs": {k: str(v) for k, v in kinds.items()},
                    "skipped_inputs": skipped}
    with backend:
        # warm-up: one of each kind, reported on its own (first-call costs, caches, allocator)
        warm = {}
        for name in names:
            result = pipeline.run(kinds[name], out / f"warm-{name}.jpg")
            if not result.ok:
                print(f"hipcad bench: {name}: {result.error}", file=sys.stderr)
                return None
            warm[name] = result.timings_ms["total"]
        report["cold_start_ms"] = {"bundle_load_and_backend_activation": round(load_ms, 1),
                                   "backend_load_only": round((backend.load_seconds or 0) * 1000.0, 1),
                                   "first_image_per_kind": warm}
        timings = {stage: [] for stage in STAGES}
        per_kind: dict[str, list[float]] = {name: [] for name in names}
        order = [names[i % len(names)] for i in range(args.images)]
        for i, name in enumerate(tqdm(order, desc="hipcad", unit="image", file=sys.stderr, disable=None if not args.json else True)):
            result = pipeline.run(kinds[name], out / f"{i}.jpg")
            if not result.ok:
                print(f"hipcad bench: {name}: {result.error}", file=sys.stderr)
                return None
            for stage in STAGES:
                timings[stage].append(result.timings_ms.get(stage, 0.0))
            per_kind[name].append(result.timings_ms["total"])
        report["images"] = len(order)
        report["e2e_ms"] = pct(timings["total"])
        report["stages_ms"] = {stage: pct(timings[stage]) for stage in STAGES if stage != "total"}
        report["per_input_ms"] = {name: {**pct(v), "n": len(v)} for name, v in per_kind.items() if v}
        untimed = [name for name, v in per_kind.items() if not v]
        if untimed:
            report["untimed_inputs"] = untimed
        # the worker's pipeline: the next radiograph decoded while the current one is inferred
        start = time.perf_counter()
        done = sum(r.ok for r in pipeline.run_many((kinds[name], out / f"t{i}.jpg") for i, name in enumerate(order)))
        report["throughput_per_s"] = round(done / (time.perf_counter() - start), 3)
        report["sequential_per_s"] = round(1000.0 * len(order) / max(sum(timings["total"]), 1e-9), 3)
    report["compute_efficiency"] = _efficiency(bundle, report["stages_ms"]["inference"]["p50"])
    report["vs_paper"] = round(PAPER_MS / report["e2e_ms"]["p50"], 2)
    from hipcad.runtime.tools.bench_isolation import isolation_cost

    report["decode_isolation"] = isolation_cost(kinds, pipeline.min_decode_side)
    if args.baseline:
        try:
            report["baseline"] = run_baseline(bundle, kinds, names, args.baseline_images, out, args.json)
            report["speedup_vs_baseline"] = round(report["baseline"]["e2e_ms"]["p50"] / report["e2e_ms"]["p50"], 1)
        except Exception as err:  # noqa: BLE001 - third-party code on any model: hipcad's figures still count
            report["baseline"] = {"error": f"the baseline could not run this model: {type(err).__name__}: {err}"}
    report["machine"]["load_average_at_end"] = load_average()
    return report


def _efficiency(bundle, inference_p50_ms: float | None) -> dict:
    flops = (bundle.manifest.get("compute") or {}).get("flops_per_input")
    peak = matmul_peak_gflops()
    achieved = 2 * flops / (inference_p50_ms / 1000.0) / 1e9 if flops and inference_p50_ms else None
    return {
        "model_gflop_per_radiograph": round(2 * flops / 1e9, 2) if flops else None,
        "achieved_gflops": round(achieved, 1) if achieved else None,
        "matmul_peak_gflops": round(peak, 1),
        "fraction_of_peak": round(achieved / peak, 3) if achieved else None,
        "peak_measured_with": "numpy float32 2048x2048 matmul, best of 5, all cores",
    }


def run_baseline(bundle, kinds, names, count, out, quiet) -> dict:
    from tqdm import tqdm

    from hipcad.runtime.tools.bench_baseline import Baseline

    baseline = Baseline(bundle)
    baseline.run(kinds[names[0]], out / "b-warm.jpg")  # warm-up, excluded
    times = {stage: [] for stage in ("decode", "preprocess", "inference", "postprocess", "total")}
    order = [names[i % len(names)] for i in range(count)]
    for i, name in enumerate(tqdm(order, desc="baseline", unit="image", file=sys.stderr, disable=None if not quiet else True)):
        for stage, seconds in baseline.run(kinds[name], out / f"b{i}.jpg").items():
            times[stage].append(seconds * 1000.0)
    return {"what": "timm EfficientNet in PyTorch eager (NCHW) + pytorch-grad-cam GradCAM (forward + backward), "
                    "pydicom/Pillow full-resolution decode, centre split, show_cam_on_image overlay",
            "weights": baseline.weights, "images": count,
            "e2e_ms": pct(times["total"]), "stages_ms": {k: pct(v) for k, v in times.items() if k != "total"}}


def identity_lines(model: dict, m: dict) -> list[str]:
    """The first lines of a text report: which model on which machine, to compare two runs."""
    return [f"model {model['name']} ({model['architecture']} {'x'.join(map(str, model['input_size']))}, {model['precision']}, "
            f"onnx sha256 {model['onnx_sha256'][:12]}) on {model['backend']} ({model['device']})",
            f"machine {m['host']}: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, load average "
            f"{m['load_average_at_start']} at start, {m.get('load_average_at_end')} at end, {m['date']}"]


def _summary(r: dict) -> str:
    lines = [*identity_lines(r["model"], r["machine"]),
             f"end to end per radiograph: p50 {r['e2e_ms']['p50']:.0f} ms, p95 {r['e2e_ms']['p95']:.0f} ms "
             f"(paper: {r['paper_ms']:.0f} ms; {r['vs_paper']}x faster)"]
    for stage, v in r["stages_ms"].items():
        lines.append(f"  {stage:<12} p50 {v['p50']:7.1f} ms   p95 {v['p95']:7.1f} ms")
    for name, v in r["per_input_ms"].items():
        lines.append(f"  {name:<32} p50 {v['p50']:7.1f} ms   p95 {v['p95']:7.1f} ms   ({v['n']} timed)")
    if r.get("untimed_inputs"):
        lines.append(f"  not timed (--images {r['images']} is fewer than the input kinds): {', '.join(r['untimed_inputs'])}")
    ce = r["compute_efficiency"]
    lines.append(f"throughput (decode overlapped with inference): {r['throughput_per_s']} radiographs/s "
                 f"(sequential {r['sequential_per_s']}/s)")
    if ce["fraction_of_peak"] is not None:
        lines.append(f"inference: {ce['achieved_gflops']} GFLOP/s = {ce['fraction_of_peak']:.0%} of the measured "
                     f"{ce['matmul_peak_gflops']} GFLOP/s matmul peak")
    iso = r["decode_isolation"]
    lines.append(f"decoding in a separate process: +{iso['overhead_ms_median']:.1f} ms per radiograph (median over the "
                 f"inputs; at most +{iso['overhead_ms_max']:.1f} ms), against {r['stages_ms']['inference']['p50']:.0f} ms "
                 f"of inference; a replaced process: {iso['decode_after_a_kill_ms']:.0f} ms for its first file")
    if "baseline" in r and "error" in r["baseline"]:
        lines.append(f"baseline: {r['baseline']['error']}")
    elif "baseline" in r:
        lines.append(f"baseline (PyTorch eager + pytorch-grad-cam): p50 {r['baseline']['e2e_ms']['p50']:.0f} ms -> "
                     f"hipcad is {r['speedup_vs_baseline']}x faster")
    for name, why in r["skipped_inputs"].items():
        lines.append(f"  {name}: {why}")
    return "\n".join(lines)
