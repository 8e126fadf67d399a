"""``hipcad build-engine``: build (or confirm) the cached TensorRT plan for a bundle."""

from __future__ import annotations

import argparse
import json
import sys

from hipcad.runtime.backends.trt import plan_cache as engine_cache
from hipcad.runtime.backends.trt.builder import (
    DEFAULT_WORKSPACE_MB,
    build_engine,
    import_tensorrt,
    query_gpu,
    resolve_precision,
)
from hipcad.runtime.errors import EngineBuildError, HipcadError
from hipcad.runtime.model.bundle import load_bundle


def main(argv: list[str] | None = None) -> int:
    """``hipcad build-engine``: build (or confirm) the cached TensorRT plan for a bundle."""
    parser = argparse.ArgumentParser(
        prog="hipcad build-engine",
        description="Build the TensorRT plan for a bundle on this GPU and cache it, keyed by the ONNX hash, GPU name, "
        "compute capability, TensorRT version and precision. A valid cached plan is reused unless --force. After the "
        "build the engine is inspected: an FP16 plan whose pinned heatmap layers are not all FP32 is refused. "
        "Exit status 0 when a valid plan is in the cache, 1 when the build failed, 2 when TensorRT cannot run here.",
    )
    parser.add_argument("bundle", nargs="?", help="model bundle folder (default: the bundled demo model)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="FP16 (default on TensorRT 10), CAM kept in FP32")
    group.add_argument("--fp32", dest="precision", action="store_const", const="fp32", help="FP32 plan")
    parser.add_argument("--max-batch", type=int, default=2, metavar="N", help="largest batch the plan accepts (default 2)")
    parser.add_argument("--workspace", type=int, default=DEFAULT_WORKSPACE_MB, metavar="MB", help="builder workspace limit")
    parser.add_argument("--version-compatible", action="store_true", help="plan that later TensorRT 10.x runtimes can load")
    parser.add_argument("--cache-dir", help="where plans are cached (default: BUNDLE/engines)")
    parser.add_argument("--force", action="store_true", help="rebuild even when a valid plan is cached")
    parser.add_argument("--allow-unverified-heatmap", action="store_true",
                        help="store an FP16 plan even when the built engine does not show every pinned heatmap layer "
                        "in FP32 (default: refuse it, exit status 1); the backend then reports it")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
        trt = import_tensorrt()
        try:
            gpu = query_gpu()
        except Exception as err:  # pycuda missing, no driver, no device
            raise EngineBuildError(f"no usable CUDA GPU: {err}") from err
        precision = resolve_precision(args.precision, trt)
        options = {"max_batch": args.max_batch, "version_compatible": args.version_compatible}
        plan = None if args.force else engine_cache.lookup(bundle, gpu, trt.__version__, precision,
                                                           cache_dir=args.cache_dir, **options)
        built = plan is None
        if built:
            plan = build_engine(bundle, precision, workspace_mb=args.workspace, cache_dir=args.cache_dir, gpu=gpu,
                                allow_unverified_heatmap=args.allow_unverified_heatmap, **options)
        record = json.loads(plan.with_suffix(".json").read_text(encoding="utf-8"))
    except EngineBuildError as err:
        print(f"hipcad build-engine: {err}", file=sys.stderr)
        return 2 if "not installed" in str(err) or "no usable CUDA GPU" in str(err) else 1
    except HipcadError as err:
        print(f"hipcad build-engine: {err}", file=sys.stderr)
        return 1
    heatmap = record.get("heatmap", {})
    report = {"plan": str(plan), "built": built, "precision": precision, "gpu": gpu.name,
              "compute_capability": list(gpu.compute_capability), "tensorrt": trt.__version__,
              "build_seconds": record.get("build_seconds"), "tf32": record.get("tf32"),
              "heatmap_fp32_verified": heatmap.get("verified"), "heatmap_layers": heatmap.get("layers"),
              "engine_precisions": heatmap.get("engine_precisions")}
    if args.json:
        print(json.dumps(report))
    else:
        state = {True: "heatmap layers FP32 in the engine", False: "heatmap NOT verified FP32", None: "not inspected"}
        print(f"{'built' if built else 'cached, valid'}: {plan} ({precision}, {gpu.name}, TensorRT {trt.__version__}; "
              f"{state[heatmap.get('verified')] if precision == 'fp16' else 'TF32 off'})")
    return 0
