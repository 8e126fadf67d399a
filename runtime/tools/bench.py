"""``hipcad bench``: end-to-end time per radiograph on realistic inputs, against the paper's 1.17 s
and (``--baseline``) against PyTorch eager + pytorch-grad-cam, measured the same way in one run."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hipcad.runtime.errors import HipcadError

PAPER_MS = 1170.0
STAGES = ("decode", "preprocess", "inference", "postprocess", "overlay", "total")


def pct(values_ms: list[float]) -> dict:
    a = np.asarray(values_ms, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 1), "p95": round(float(np.percentile(a, 95)), 1)}


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
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    from hipcad.runtime.backends import CHOICES, open_backend
    from hipcad.runtime.inference.pipeline import Pipeline
    from hipcad.runtime.model.bundle import load_bundle
    from hipcad.runtime.tools import bench_triton
    from hipcad.runtime.tools.bench_inputs import make_inputs

    parser = argparse.ArgumentParser(prog="hipcad bench", description=__doc__)
    parser.add_argument("--model", metavar="BUNDLE", help="model bundle (default: the bundled demo model)")
    parser.add_argument("--backend", default="auto", choices=CHOICES)
    parser.add_argument("--images", type=int, default=20, help="timed radiographs, cycling through the input kinds (default 20)")
    parser.add_argument("--baseline", action="store_true", help="also time PyTorch eager + pytorch-grad-cam on the same inputs")
    parser.add_argument("--baseline-images", type=int, default=5, help="timed radiographs for the baseline (default 5)")
    parser.add_argument("--workdir", default=".cache/bench", help="where the benchmark radiographs are made and kept")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    bench_triton.add_arguments(parser)  # --triton HOST:PORT --clients N...: simulated boxes on one server
    args = parser.parse_args(argv)
    if args.triton_url:
        return bench_triton.run(args)

    try:
        inputs = make_inputs(Path(args.workdir))
        t0 = time.perf_counter()
        bundle = load_bundle(args.model)
        backend = open_backend(args.backend, bundle)
    except HipcadError as err:
        print(f"hipcad bench: {err}", file=sys.stderr)
        return 2
    load_ms = (time.perf_counter() - t0) * 1000.0
    kinds = {k: v for k, v in inputs.items() if isinstance(v, Path)}
    skipped = {k: v for k, v in inputs.items() if not isinstance(v, Path)}
    from hipcad.runtime.imaging.isolation import DecodePool

    with DecodePool(1) as decoder, tempfile.TemporaryDirectory(prefix="hipcad-bench-") as tmp:
        pipeline = Pipeline(bundle, backend, decoder=decoder)  # as the worker and predict decode: isolated
        report = _run(args, bundle, backend, pipeline, kinds, skipped, load_ms, Path(tmp))
    if report is None:
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_summary(report))
    return 0


def _run(args, bundle, backend, pipeline, kinds, skipped, load_ms, out: Path) -> dict | None:
    from tqdm import tqdm

    names = list(kinds)
    report: dict = {"backend": backend.name, "device": backend.device, "model": bundle.describe(), "machine": machine(),
                    "paper_ms": PAPER_MS, "inputs": {k: str(v) for k, v in kinds.items()}, "skipped_inputs": skipped}
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
            for stage in STAGES:
                timings[stage].append(result.timings_ms.get(stage, 0.0))
            per_kind[name].append(result.timings_ms["total"])
        report["e2e_ms"] = pct(timings["total"])
        report["stages_ms"] = {stage: pct(timings[stage]) for stage in STAGES if stage != "total"}
        report["per_input_ms"] = {name: pct(v) for name, v in per_kind.items()}
        # the worker's pipeline: the next radiograph decoded while the current one is inferred
        start = time.perf_counter()
        done = sum(r.ok for r in pipeline.run_many((kinds[name], out / f"t{i}.jpg") for i, name in enumerate(order)))
        report["throughput_per_s"] = round(done / (time.perf_counter() - start), 3)
        report["sequential_per_s"] = round(1000.0 * len(order) / sum(timings["total"]), 3)
    flops = (bundle.manifest.get("compute") or {}).get("flops_per_input")
    peak = matmul_peak_gflops()
    inference_s = report["stages_ms"]["inference"]["p50"] / 1000.0
    report["compute_efficiency"] = {
        "model_gflop_per_radiograph": round(2 * flops / 1e9, 2) if flops else None,
        "achieved_gflops": round(2 * flops / inference_s / 1e9, 1) if flops else None,
        "matmul_peak_gflops": round(peak, 1),
        "fraction_of_peak": round(2 * flops / inference_s / 1e9 / peak, 3) if flops else None,
        "peak_measured_with": "numpy float32 2048x2048 matmul, best of 5, all cores",
    }
    report["vs_paper"] = round(PAPER_MS / report["e2e_ms"]["p50"], 2)
    from hipcad.runtime.tools.bench_isolation import isolation_cost

    report["decode_isolation"] = isolation_cost(kinds, pipeline.min_decode_side)
    if args.baseline:
        report["baseline"] = run_baseline(bundle, kinds, names, args.baseline_images, out, args.json)
        report["speedup_vs_baseline"] = round(report["baseline"]["e2e_ms"]["p50"] / report["e2e_ms"]["p50"], 1)
    return report


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


def _summary(r: dict) -> str:
    lines = [f"{r['model']['name']} on {r['backend']} ({r['device']}), {r['machine']['cpu']}, {r['machine']['cores']} cores",
             f"end to end per radiograph: p50 {r['e2e_ms']['p50']:.0f} ms, p95 {r['e2e_ms']['p95']:.0f} ms "
             f"(paper: {r['paper_ms']:.0f} ms; {r['vs_paper']}x faster)"]
    for stage, v in r["stages_ms"].items():
        lines.append(f"  {stage:<12} p50 {v['p50']:7.1f} ms   p95 {v['p95']:7.1f} ms")
    for name, v in r["per_input_ms"].items():
        lines.append(f"  {name:<32} p50 {v['p50']:7.1f} ms")
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
    if "baseline" in r:
        lines.append(f"baseline (PyTorch eager + pytorch-grad-cam): p50 {r['baseline']['e2e_ms']['p50']:.0f} ms -> "
                     f"hipcad is {r['speedup_vs_baseline']}x faster")
    for name, why in r["skipped_inputs"].items():
        lines.append(f"  {name}: {why}")
    return "\n".join(lines)
