"""Prometheus text exposition (format 0.0.4) of the store's counts and latencies."""

from __future__ import annotations

from flask import Blueprint, Response

from hipcad.appliance.kiosk import context as ctx
from hipcad.appliance.storage.store import Store

BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(store: Store, health: dict) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

    counts = health["counts"]
    metric("hipcad_results_total", "counter", "Radiographs finished, by status.",
           [('{status="done"}', counts["done"]), ('{status="failed"}', counts["failed"])])
    metric("hipcad_quarantined_total", "counter", "Inputs moved to quarantine.", [("", counts["quarantined"])])
    metric("hipcad_duplicates_total", "counter", "Inputs dropped as already read.", [("", counts["duplicates"])])
    metric("hipcad_backend_fallbacks_total", "counter", "Run-time fallbacks to the next backend.",
           [("", counts["backend_fallbacks"])])
    metric("hipcad_queue_length", "gauge", "Inputs waiting or being read.",
           [("", health["queue"]["queued"] + health["queue"]["processing"])])
    worker = health["worker"]
    metric("hipcad_worker_up", "gauge", "1 while the worker's heartbeat is fresh.", [("", 1 if worker["up"] else 0)])
    metric("hipcad_reading_stuck", "gauge", "1 while the worker runs but its inference thread makes no progress.",
           [("", 1 if worker.get("inference_stuck") else 0)])
    decoder = worker.get("decoder") or {}
    if decoder.get("isolated"):
        metric("hipcad_decoder_failures_total", "counter", "Files whose decoding process crashed or timed out.",
               [('{kind="crashed"}', decoder.get("crashed", 0)), ('{kind="timed_out"}', decoder.get("timed_out", 0))])
    if worker["heartbeat_age_s"] is not None:
        metric("hipcad_worker_heartbeat_age_seconds", "gauge", "Seconds since the worker's last heartbeat.",
               [("", worker["heartbeat_age_s"])])
    if worker.get("disk_free_mb") is not None:
        metric("hipcad_disk_free_bytes", "gauge", "Free space in the data folder.", [("", worker["disk_free_mb"] * 2**20)])
        metric("hipcad_accepting", "gauge", "1 while new files are accepted (disk guard).", [("", 1 if worker["accepting"] else 0)])
    latencies = [ms / 1000.0 for ms in store.latencies_ms()]
    samples = [(f'{{le="{b:g}"}}', sum(1 for s in latencies if s <= b)) for b in BUCKETS_S]
    samples.append(('{le="+Inf"}', len(latencies)))
    name = "hipcad_inference_seconds"
    lines.append(f"# HELP {name} Time per radiograph (decode to overlay), over the results kept.")
    lines.append(f"# TYPE {name} histogram")
    lines.extend(f"{name}_bucket{labels} {value:g}" for labels, value in samples)
    lines.append(f"{name}_sum {sum(latencies):g}")
    lines.append(f"{name}_count {len(latencies)}")
    return "\n".join(lines) + "\n"


bp = Blueprint("prometheus", __name__)


@bp.get("/metrics")
def metrics():
    return Response(render(ctx.store(), ctx.health()), content_type=CONTENT_TYPE)
