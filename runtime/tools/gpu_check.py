"""``hipcad gpu-check``: what a machine with an NVIDIA GPU does with a bundle, in one command.

PyTorch CUDA FP16 latency for a batch of 2 (eager, and replayed as a CUDA graph), FP16 against
FP32 parity, and, where TensorRT is installed, the engine build, its parity and its latency.
Meant to finish well under ten minutes (the TensorRT build is most of it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.model.selftest import compare_outputs, reference_inputs


def _percentiles(samples_s: list[float]) -> dict:
    ms = np.asarray(samples_s) * 1000.0
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p95": round(float(np.percentile(ms, 95)), 3), "n": len(ms)}


def _time(fn, iterations: int, sync) -> dict:
    for _ in range(5):
        fn()
    sync()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return _percentiles(samples)


def torch_cuda_graph_latency(backend, batch: np.ndarray, iterations: int) -> dict:
    """Host batch -> device -> replayed CUDA graph of the FP16 model -> host, per call."""
    import torch

    static_in = torch.from_numpy(batch).cuda()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.inference_mode(), torch.cuda.stream(stream), torch.autocast("cuda", dtype=torch.float16):
        for _ in range(3):  # warm-up on a side stream before capture (torch.cuda.graphs docs)
            backend.module(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16), torch.cuda.graph(graph):
        static_logits, static_cam = backend.module(static_in)
    pinned = torch.from_numpy(batch).pin_memory()

    def step():
        static_in.copy_(pinned, non_blocking=True)
        graph.replay()
        return static_logits.float().cpu(), static_cam.float().cpu()

    return _time(step, iterations, torch.cuda.synchronize)


def main(argv: list[str] | None = None) -> int:
    from hipcad.runtime.backends import backend_class, open_backend
    from hipcad.runtime.model.bundle import load_bundle

    parser = argparse.ArgumentParser(prog="hipcad gpu-check", description=__doc__)
    parser.add_argument("bundle", help="model bundle with model.pt2 (hipcad export without --no-torch)")
    parser.add_argument("--iterations", type=int, default=100, help="timed calls per measurement (default 100)")
    parser.add_argument("--skip-tensorrt", action="store_true", help="do not build or run a TensorRT engine")
    args = parser.parse_args(argv)
    report: dict = {}
    try:
        import torch
    except ImportError:
        print("hipcad gpu-check needs PyTorch with CUDA", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("hipcad gpu-check: PyTorch sees no CUDA GPU", file=sys.stderr)
        return 2
    report["gpu"] = torch.cuda.get_device_name()
    report["torch"] = torch.__version__
    try:
        bundle = load_bundle(args.bundle)
        batch = reference_inputs(2, bundle.input_hw, seed=3)
        parity_inputs = reference_inputs(16, bundle.input_hw, seed=4)
        outputs = {}
        with open_backend("torch", bundle, device="cuda", precision="fp32") as fp32:
            outputs["torch-fp32"] = fp32.infer(parity_inputs)
            report["torch_fp32_ms"] = _time(lambda: fp32.infer(batch), args.iterations, torch.cuda.synchronize)
        with open_backend("torch", bundle, device="cuda", precision="fp16") as fp16:
            outputs["torch-fp16"] = fp16.infer(parity_inputs)
            report["torch_fp16_ms"] = _time(lambda: fp16.infer(batch), args.iterations, torch.cuda.synchronize)
            try:
                report["torch_fp16_cuda_graph_ms"] = torch_cuda_graph_latency(fp16, batch, args.iterations)
            except Exception as err:  # capture can fail on some graphs; report, don't hide the rest
                report["torch_fp16_cuda_graph_ms"] = {"error": f"{type(err).__name__}: {err}"}
        with open_backend("onnxruntime", bundle, device="cpu") as ort_cpu:
            outputs["onnxruntime-cpu"] = ort_cpu.infer(parity_inputs)
        trt_ok, trt_why = backend_class("tensorrt").availability()
        if trt_ok and not args.skip_tensorrt:
            start = time.perf_counter()
            with open_backend("tensorrt", bundle) as trt:
                report["tensorrt_activate_s"] = round(time.perf_counter() - start, 1)
                report["tensorrt_device"] = trt.device
                outputs["tensorrt"] = trt.infer(parity_inputs)
                report["tensorrt_ms"] = _time(lambda: trt.infer(batch), args.iterations, lambda: None)
        else:
            report["tensorrt"] = f"not run: {trt_why or '--skip-tensorrt'}"
    except HipcadError as err:
        print(f"hipcad gpu-check: {err}", file=sys.stderr)
        return 1
    reference = outputs["torch-fp32"]
    report["parity_vs_torch_fp32"] = {
        name: compare_outputs(reference, out, bundle.threshold, "fp16" if "fp16" in name or name == "tensorrt" else "fp32",
                              bundle.calibration)
        for name, out in outputs.items() if name != "torch-fp32"
    }
    report["agree"] = all(p["agree"] for p in report["parity_vs_torch_fp32"].values())
    print(json.dumps(report, indent=2))
    return 0 if report["agree"] else 1
