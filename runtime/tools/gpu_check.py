"""``hipcad gpu-check``: the first thing to run on a machine with an NVIDIA GPU.

It measures whatever this machine can run and writes everything into one JSON file (schema in the
README, "hipcad gpu-check"): the GPU, driver and library versions; for each GPU backend - TensorRT
FP16 and FP32 (build time and the per-layer precision of the heatmap path), PyTorch CUDA FP16 and
FP32 (eager and replayed as a CUDA graph), ONNX Runtime's CUDA provider and TensorRT provider - the
precision it ran with, its self-test, its parity with ONNX Runtime on the CPU (FP32, the reference)
and its latency p50/p95 for batches of 1, 2 and 8. It never stops before its report: what could not
be measured is listed with the reason. Exit status: 0 everything measured and within tolerance,
1 something measured failed, 3 nothing failed but something could not be measured (a CPU-only
machine, a package missing, the time budget spent), 2 the bundle could not be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.tools import gpu_probe

SCHEMA = "hipcad-gpu-check/1"
BATCHES = (1, 2, 8)
PARITY_IMAGES = 16
# (id, registry name, options); in order of importance, so a spent time budget drops the last ones
VARIANTS = (
    ("tensorrt-fp16", "tensorrt", {"precision": "fp16"}),
    ("tensorrt-fp32", "tensorrt", {"precision": "fp32"}),
    ("torch-cuda-fp16", "torch", {"device": "cuda", "precision": "fp16"}),
    ("torch-cuda-fp32", "torch", {"device": "cuda", "precision": "fp32"}),
    ("onnxruntime-cuda-fp32", "onnxruntime-cuda", {}),
    ("onnxruntime-tensorrt-fp16", "onnxruntime-tensorrt", {"precision": "fp16"}),
    ("onnxruntime-tensorrt-fp32", "onnxruntime-tensorrt", {"precision": "fp32"}),
)
BUILDS = ("tensorrt", "onnxruntime-tensorrt")  # variants that may build an engine: need more of the budget left
BUILD_RESERVE_S, RESERVE_S = 120.0, 20.0


class NotMeasured(HipcadError):
    """A variant this machine cannot run (no GPU, a package missing, the budget spent)."""


def percentiles(samples_s: list[float]) -> dict:
    ms = np.asarray(samples_s) * 1000.0
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p95": round(float(np.percentile(ms, 95)), 3), "n": len(ms)}


def timed(fn, iterations: int, sync=lambda: None, warmup: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return percentiles(samples)


def torch_cuda_graph_step(backend, batch: np.ndarray):
    """Host batch -> device -> the model replayed as a CUDA graph -> host, as one callable."""
    import torch

    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=backend.precision == "fp16")
    static_in = torch.from_numpy(batch).cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(stream), autocast:
        for _ in range(3):  # warm-up on a side stream before capture (torch.cuda.graphs docs)
            backend.module(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), autocast, torch.cuda.graph(graph):
        static_logits, static_cam = backend.module(static_in)
    pinned = torch.from_numpy(batch).pin_memory()

    def step():
        static_in.copy_(pinned, non_blocking=True)
        graph.replay()
        return static_logits.float().cpu(), static_cam.float().cpu()

    return step


def prebuild(bundle, options: dict, cache_dir, rebuild: bool, deadline: float) -> dict:
    """Build (or find) the TensorRT plan before the backend opens it, so that its build is timed and
    cancelled at the deadline. The build record comes from the plan's sidecar."""
    from hipcad.runtime.backends.trt import builder, plan_cache

    trt = builder.import_tensorrt()
    gpu = builder.query_gpu()
    plan = None if rebuild else plan_cache.lookup(bundle, gpu, trt.__version__, options["precision"],
                                                   max_batch=max(BATCHES), cache_dir=cache_dir)
    built = plan is None
    if built:
        plan = builder.build_engine(bundle, options["precision"], max_batch=max(BATCHES), cache_dir=cache_dir,
                                    gpu=gpu, deadline=deadline)
    record = json.loads(plan.with_suffix(".json").read_text(encoding="utf-8"))
    return {"plan": str(plan), "built_now": built, "seconds": record.get("build_seconds"), "tf32": record.get("tf32"),
            "heatmap": record.get("heatmap")}


def missing(name: str, bundle) -> str | None:
    """Why this machine cannot run backend ``name`` at all (package, GPU, provider, model.pt2), or None.
    What goes wrong after these checks passed is a failure, not a gap."""
    from hipcad.runtime.backends import backend_class

    ok, why = backend_class(name).availability()
    if not ok:
        return why
    if name == "torch":
        import torch

        if not torch.cuda.is_available():
            return f"PyTorch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no CUDA GPU"
        if bundle.file("torch") is None:
            return f"bundle {bundle.name} has no model.pt2 (export it without --no-torch)"
    if name.startswith("onnxruntime-"):
        import onnxruntime

        from hipcad.runtime.backends.onnxrt import PROVIDERS

        provider, available = PROVIDERS[name.split("-", 1)[1]], onnxruntime.get_available_providers()
        if provider not in available:
            return f"onnxruntime {onnxruntime.__version__} has no {provider} (providers: {', '.join(available)}; " \
                   "pip install 'hipcad[gpu]' in an environment without the CPU onnxruntime)"
    return None


def run_variant(name: str, options: dict, bundle, inputs: dict, args, deadline: float) -> dict:
    from hipcad.runtime.backends import open_backend
    from hipcad.runtime.model.selftest import compare_outputs, run_selftest

    why = missing(name, bundle)
    if why:
        raise NotMeasured(why)
    left = deadline - time.monotonic()
    if left < (BUILD_RESERVE_S if name in BUILDS else RESERVE_S):
        raise NotMeasured(f"time budget spent (--budget-s {args.budget_s:g}; {max(left, 0):.0f} s left)")
    result: dict = {"backend": name, "options": options}
    options = dict(options)
    if name == "tensorrt":
        result["build"] = prebuild(bundle, options, args.cache_dir, args.rebuild, deadline)
        options.update(max_batch=max(BATCHES), cache_dir=args.cache_dir, allow_build=False)
    elif name == "onnxruntime-tensorrt":
        options.update(max_batch=max(BATCHES), cache_dir=args.cache_dir)
    backend = open_backend(name, bundle, selftest=False, **options)
    try:
        result.update(device=backend.device, precision=backend.precision, precision_note=backend.precision_note,
                      activate_s=round(backend.load_seconds, 2))
        if getattr(backend, "engine_cache", None) is not None:  # ONNX Runtime's TensorRT provider
            result["engine_cache"] = str(backend.engine_cache)
        result["selftest"] = _checked(lambda: run_selftest(backend))
        if inputs["reference"] is not None:
            result["parity"] = compare_outputs(inputs["reference"], backend.infer(inputs["parity"]), bundle.threshold,
                                               backend.precision, bundle.calibration)
        sync = _torch_sync() if name == "torch" else (lambda: None)
        result["latency_ms"] = {str(n): timed(lambda n=n: backend.infer(inputs["batch"][:n]), args.iterations, sync)
                                for n in BATCHES}
        if name == "torch":
            result["cuda_graph_latency_ms"] = {str(n): _checked(lambda n=n: timed(
                torch_cuda_graph_step(backend, inputs["batch"][:n]), args.iterations, sync)) for n in BATCHES}
    finally:
        backend.deactivate()
    bad = [what for what in ("selftest", "parity") if not result.get(what, {}).get("agree", True)]
    result["status"] = "failed" if bad else "ok"
    if bad:
        result["reason"] = f"{' and '.join(bad)} outside the {backend.precision} tolerance"
    if name == "tensorrt" and options["precision"] == "fp16" and not (result["build"]["heatmap"] or {}).get("verified"):
        result.update(status="failed", reason="heatmap layers not verified FP32 in the engine")
    return result


def _checked(fn) -> dict:
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 - recorded in the report, which goes on
        return {"agree": False, "error": f"{type(err).__name__}: {err}"}


def _torch_sync():
    import torch

    return torch.cuda.synchronize


def measure(report: dict, args) -> None:
    from hipcad.runtime.backends import tf32
    from hipcad.runtime.model.bundle import load_bundle
    from hipcad.runtime.model.selftest import reference_inputs

    deadline = time.monotonic() + args.budget_s
    # before anything loads CUDA: FP32 is FP32 for every library in this process (the GPU units do the same)
    report["tf32_override"] = dict(zip(("in_force", "how"), tf32.process_tf32_off()))
    report["environment"] = gpu_probe.environment()
    report["gpu"] = gpu_probe.gpu()
    report["versions"] = gpu_probe.versions()
    bundle = load_bundle(args.bundle)
    report["bundle"] = {"name": bundle.name, "path": str(bundle.path), "input_hw": list(bundle.input_hw),
                        "onnx_sha256": bundle.onnx_sha256, "has_torch_program": bundle.file("torch") is not None}
    inputs = {"parity": reference_inputs(PARITY_IMAGES, bundle.input_hw, seed=4),
              "batch": reference_inputs(max(BATCHES), bundle.input_hw, seed=3), "reference": None}
    try:
        from hipcad.runtime.backends import open_backend

        with open_backend("onnxruntime", bundle, device="cpu") as cpu:
            inputs["reference"] = cpu.infer(inputs["parity"])
        report["reference"] = {"backend": "onnxruntime", "device": "CPU", "precision": "fp32", "images": PARITY_IMAGES}
    except Exception as err:  # noqa: BLE001
        report["reference"] = {"error": f"{type(err).__name__}: {err}"}
    for variant, name, options in VARIANTS:
        if variant in args.skip:
            report["backends"][variant] = {"status": "not_measured", "reason": "--skip"}
            continue
        try:
            report["backends"][variant] = run_variant(name, options, bundle, inputs, args, deadline)
        except NotMeasured as why:
            report["backends"][variant] = {"status": "not_measured", "reason": str(why)}
        except Exception as err:  # noqa: BLE001 - a backend that is there but breaks is a finding
            report["backends"][variant] = {"status": "failed", "reason": f"{type(err).__name__}: {err}"}


def finish(report: dict, started: float) -> int:
    backends = report["backends"]
    report["failures"] = {k: v["reason"] for k, v in backends.items() if v["status"] == "failed"}
    report["not_measured"] = {k: v["reason"] for k, v in backends.items() if v["status"] == "not_measured"}
    if "error" in report.get("gpu", {}):
        report["not_measured"]["gpu"] = report["gpu"]["error"]
    if "error" in report.get("reference", {}):
        report["not_measured"]["parity"] = f"no reference: {report['reference']['error']}"
    if report.get("error"):
        report["status"], code = "error", 2
    elif report["failures"]:
        report["status"], code = "failed", 1
    elif report["not_measured"]:
        report["status"], code = "incomplete", 3
    else:
        report["status"], code = "ok", 0
    report["exit_status"] = code
    report["seconds"] = round(time.monotonic() - started, 1)
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return code


def summary(report: dict) -> str:
    lines = [f"GPU: {report.get('gpu', {}).get('name') or report.get('gpu', {}).get('error', 'unknown')}"]
    for variant, r in report["backends"].items():
        if r["status"] == "not_measured" or "latency_ms" not in r:
            lines.append(f"  {variant:<27} {r['status'].upper().replace('_', ' ')}: {r['reason']}")
            continue
        parity, latency = r.get("parity", {}), r.get("latency_ms", {}).get("2", {})
        lines.append(f"  {variant:<27} {r['status'].upper():<6} {r.get('precision', '?'):<5} parity "
                     f"{'agrees' if parity.get('agree') else 'DIFFERS' if parity else 'n/a'} "
                     f"(logits {parity.get('logits_max_abs', float('nan')):.1e}), batch 2 p50 {latency.get('p50', '-')} ms"
                     + (f" - {r['reason']}" if r.get("reason") else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hipcad gpu-check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", nargs="?", help="model bundle (default: the demo model, which has no model.pt2 "
                        "for the PyTorch rows; `make gpu-check` exports an EfficientNet-B4 that has)")
    parser.add_argument("--out", default="gpu-check.json", help="the JSON report (default: gpu-check.json)")
    parser.add_argument("--iterations", type=int, default=50, help="timed calls per latency (default 50)")
    parser.add_argument("--budget-s", type=float, default=420, help="time for the measurements; what would start "
                        f"later (a build with < {BUILD_RESERVE_S:g} s left) is reported as not measured (default 420)")
    parser.add_argument("--cache-dir", help="TensorRT plans and engine caches (default: BUNDLE/engines)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild TensorRT plans even when cached")
    parser.add_argument("--skip", action="append", default=[], choices=[v for v, _, _ in VARIANTS], metavar="VARIANT",
                        help=f"leave a measurement out (repeatable): {', '.join(v for v, _, _ in VARIANTS)}")
    args = parser.parse_args(argv)
    started = time.monotonic()
    report: dict = {"schema": SCHEMA, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "command": ["hipcad", "gpu-check", *(sys.argv[1:] if argv is None else argv)], "backends": {}}
    try:
        measure(report, args)
    except KeyboardInterrupt:
        report["error"] = "interrupted"
    except Exception as err:  # noqa: BLE001 - the bundle could not be read: still a report
        report["error"] = f"{type(err).__name__}: {err}"
    code = finish(report, started)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(summary(report))
    if report["not_measured"]:
        print(f"hipcad gpu-check: could not measure {', '.join(report['not_measured'])} (reasons in the report)",
              file=sys.stderr)
    if report.get("error"):
        print(f"hipcad gpu-check: {report['error']}", file=sys.stderr)
    print(f"report: {out} (status {report['status']}, exit {code})")
    return code
