"""``hipcad bench --triton HOST:PORT --clients N [N...]``: N simulated boxes reading radiographs at once
through one Triton server, next to N independent local CPU pipelines in the same run.

Each simulated box is a thread with its own pipeline and its own connection (tritonclient's HTTP
client is bound to its thread): it decodes, splits and infers its radiographs one after another
(no overlay). Per target and client count: radiographs per second over the wall time, p50/p95 per
radiograph end to end and of the inference stage (for the server: the round trip), and for the
server its own statistics over the run (deltas of Triton's statistics API): how many model
executions served how many half-images, and the batch sizes the dynamic batcher formed. The local
pipelines each get an ONNX Runtime session of their own with ``cores // N`` threads (at least 1).

All of it shares this machine's cores: the boxes' decoding, the server and the local pipelines.
Compare the rows of one run; on a real network each box decodes on its own CPU.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from hipcad.runtime.errors import HipcadError


def add_arguments(parser) -> None:
    from hipcad.runtime.backends import triton

    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8], metavar="N",
                        help="with --triton: simulated boxes at once, one or more counts (default 1 4 8)")
    parser.add_argument("--per-client", type=int, default=10, metavar="K",
                        help="with --triton: radiographs each simulated box reads (default 10)")
    triton.add_arguments(parser, url_flags=("--triton", "--triton-url"))


def run(args) -> int:
    """The bench for parsed ``hipcad bench`` arguments with ``--triton``."""
    import json

    from hipcad.runtime.backends import open_backend, triton
    from hipcad.runtime.model.bundle import load_bundle
    from hipcad.runtime.tools.bench import machine
    from hipcad.runtime.tools.bench_inputs import make_inputs

    if min(args.clients) < 1 or args.per_client < 1:
        print("hipcad bench: --clients and --per-client must be at least 1", file=sys.stderr)
        return 2
    try:
        if args.inputs:
            inputs = [Path(p) for p in args.inputs]
        else:
            inputs = [p for p in make_inputs(Path(args.workdir)).values() if isinstance(p, Path)]
        bundle = load_bundle(args.model)
        options = triton.options_from_args(args, "triton")
        probe = open_backend("triton", bundle, selftest=False, **options)  # statistics only
    except HipcadError as err:
        print(f"hipcad bench: {err}", file=sys.stderr)
        return 2
    report = {"model": bundle.describe(), "machine": machine(), "server": probe.device, "inputs": [p.name for p in inputs],
              "per_client": args.per_client, "runs": []}
    with probe:
        for clients in args.clients:
            for target in ("triton", "local"):
                if target == "triton":
                    row = _load(lambda: open_backend("triton", bundle, **options), bundle, clients, args, inputs, probe)
                else:
                    threads = max(1, (os.cpu_count() or 1) // clients)
                    row = _load(lambda threads=threads: open_backend("onnxruntime", bundle, device="cpu", threads=threads),
                                bundle, clients, args, inputs)
                    row["ort_threads_per_pipeline"] = threads
                report["runs"].append(row)
                if not args.json:
                    print(_line(row), flush=True)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if all(r["errors"] == 0 for r in report["runs"]) else 1


def _load(make_backend, bundle, clients: int, args, inputs, probe=None) -> dict:
    """``clients`` threads, each with its own backend and pipeline, ``args.per_client`` radiographs each."""
    from hipcad.runtime.inference.pipeline import Pipeline
    from hipcad.runtime.tools.bench import pct

    ready, go = threading.Barrier(clients + 1), threading.Barrier(clients + 1)
    lock = threading.Lock()
    total, inference, errors, names = [], [], [], []

    def box(index: int) -> None:
        backend = None
        try:
            backend = make_backend()  # activated and self-tested in this thread
            pipeline = Pipeline(bundle, backend)
            names.append(f"{backend.name} ({backend.device})")
            pipeline.run(inputs[index % len(inputs)])  # warm: first-call costs, connection
        except Exception as err:  # noqa: BLE001 - reported in the row
            with lock:
                errors.append(f"{type(err).__name__}: {err}")
        ready.wait()
        go.wait()
        try:
            if backend is None:
                return
            for k in range(args.per_client):
                result = pipeline.run(inputs[(index + k) % len(inputs)])
                with lock:
                    if result.ok:
                        total.append(result.timings_ms["total"])
                        inference.append(result.timings_ms["inference"])
                    else:
                        errors.append(result.error)
        finally:
            if backend is not None:
                backend.deactivate()

    threads = [threading.Thread(target=box, args=(i,), name=f"box-{i}") for i in range(clients)]
    for thread in threads:
        thread.start()
    ready.wait()
    before = settled_statistics(probe) if probe else None
    go.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    row = {"target": "triton" if probe else "local", "backend": names[0] if names else None, "clients": clients,
           "radiographs": len(total), "errors": len(errors), "first_error": errors[0][:300] if errors else None,
           "wall_s": round(wall, 2), "radiographs_per_s": round(len(total) / wall, 2) if wall else None,
           "e2e_ms": pct(total) if total else None, "inference_ms": pct(inference) if inference else None}
    if probe:
        row["server_stats"] = server_delta(before, settled_statistics(probe))
    return row


def settled_statistics(probe, timeout: float = 5.0) -> dict:
    """The server's statistics once no request is in flight: Triton counts a request only after its
    response has been sent, so a snapshot taken right after the last response can miss it."""
    def requests(stats):
        return int(((stats.get("inference_stats") or {}).get("success") or {}).get("count") or 0)

    stats, deadline = probe.statistics(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        again = probe.statistics()
        if requests(again) == requests(stats):
            return again
        stats = again
    return stats


def server_delta(before: dict, after: dict) -> dict:
    """What the server did between two statistics snapshots: half-images, executions, batch sizes."""
    def batches(stats):
        return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}

    def number(stats, *path):
        for key in path:
            stats = stats.get(key, {}) if isinstance(stats, dict) else {}
        return int(stats or 0)

    images = number(after, "inference_count") - number(before, "inference_count")
    executions = number(after, "execution_count") - number(before, "execution_count")
    requests = number(after, "inference_stats", "success", "count") - number(before, "inference_stats", "success", "count")
    queue_ns = number(after, "inference_stats", "queue", "ns") - number(before, "inference_stats", "queue", "ns")
    b0, b1 = batches(before), batches(after)
    sizes = {size: b1[size] - b0.get(size, 0) for size in sorted(b1) if b1[size] - b0.get(size, 0)}
    return {"requests": requests, "half_images": images, "executions": executions,
            "mean_batch": round(images / executions, 2) if executions else None,
            "batch_sizes": sizes, "mean_queue_ms": round(queue_ns / requests / 1e6, 1) if requests else None}


def _line(row: dict) -> str:
    if not row["radiographs"]:
        return f"{row['target']:>6} x{row['clients']}: no radiograph read ({row['first_error']})"
    text = (f"{row['target']:>6} x{row['clients']}: {row['radiographs_per_s']:.2f} radiographs/s; per radiograph p50 "
            f"{row['e2e_ms']['p50']:.0f} ms, p95 {row['e2e_ms']['p95']:.0f} ms (inference p50 {row['inference_ms']['p50']:.0f}, "
            f"p95 {row['inference_ms']['p95']:.0f})")
    stats = row.get("server_stats")
    if stats:
        text += (f"; server: {stats['half_images']} half-images in {stats['executions']} executions (mean batch "
                 f"{stats['mean_batch']}, sizes {stats['batch_sizes']}, queue {stats['mean_queue_ms']} ms)")
    if row["errors"]:
        text += f"; {row['errors']} errors ({row['first_error']})"
    return text
