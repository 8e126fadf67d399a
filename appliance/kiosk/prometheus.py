"""Prometheus text exposition (format 0.0.4) of the store's counts and latencies, and of the drift
monitor's window (:mod:`hipcad.appliance.drift`: gauges over the last ``drift_window_days``)."""

from __future__ import annotations

from flask import Blueprint, Response

from hipcad.appliance.kiosk import context as ctx
from hipcad.appliance.storage.store import Store

BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def label(value) -> str:
    """A label value, escaped as the exposition format requires."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(store: Store, health: dict, drift: dict | None = None) -> str:
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
    metric("hipcad_backend_returns_total", "counter", "Returns to the regional inference server after a fallback.",
           [("", counts["backend_returns"])])
    server = health["backend"].get("server")
    if server is not None:
        metric("hipcad_inference_server_in_use", "gauge", "1 while radiographs are read on the regional inference server.",
               [("", 1 if server.get("in_use") else 0)])
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
    if drift is not None:
        drift_metrics(metric, drift)
    return "\n".join(lines) + "\n"


def drift_metrics(metric, drift: dict) -> None:
    window = f'window="{drift["window_days"]}d"'
    days = drift["daily"][-drift["window_days"]:]
    metric("hipcad_drift_radiographs", "gauge", "Radiographs finished in the drift window, by outcome.",
           [(f'{{{window},outcome="{o}"}}', sum(d[k] for d in days))
            for o, k in (("assessed", "assessed"), ("not_eligible", "ineligible"), ("unreadable", "unreadable"))])
    metric("hipcad_drift_not_eligible", "gauge", "Radiographs not assessed in the drift window, by first reason.",
           [(f'{{{window},reason="{label(r)}"}}', n) for r, n in drift["reasons"].items()])
    metric("hipcad_drift_decode_warnings", "gauge", "Radiographs with decode warnings in the drift window.",
           [(f"{{{window}}}", sum(d["warned"] for d in days))])
    sides = drift["sides"].items()
    windows = ((window, sides), (f'window="last{drift["recent"]}"', drift["recent_sides"].items()))
    metric("hipcad_drift_halves", "gauge", "Hips assessed in the drift window.", [(f'{{{window},side="{s}"}}', e["halves"]) for s, e in sides])
    metric("hipcad_drift_positive_share", "gauge", "Share of hips called fractured in the drift window.",
           [(f'{{{window},side="{s}"}}', e["positives"] / e["halves"]) for s, e in sides if e["halves"]])
    edges = [f"{e:g}" for e in drift["edges"]] + ["+Inf"]
    samples = []
    for s, e in sides:
        cumulative = 0
        for le, n in zip(edges, e["histogram"]):
            cumulative += n
            samples.append((f'{{{window},side="{s}",le="{le}"}}', cumulative))
    metric("hipcad_drift_logit", "gauge", "Hips in the drift window with fracture log-odds (before calibration) below le.", samples)
    ref = drift["reference"]
    if ref:
        metric("hipcad_drift_reference_positive_share", "gauge", "Share of the model's reference hips called fractured "
               "at the threshold in use.", [("", ref["positive_share"])])
        tested = [(w, s, e["ks"]) for w, group in windows for s, e in group if e["ks"] and e["ks"]["statistic"] is not None]
        metric("hipcad_drift_ks_statistic", "gauge", "Kolmogorov-Smirnov D of the window's log-odds against the reference.",
               [(f'{{{w},side="{s}"}}', ks["statistic"]) for w, s, ks in tested])
        metric("hipcad_drift_ks_p_value", "gauge", "Its p-value.", [(f'{{{w},side="{s}"}}', ks["p_value"]) for w, s, ks in tested])
    metric("hipcad_drift_shift", "gauge", f"1 when a shift is flagged ({drift['test']}).",
           [(f'{{{w},side="{s}"}}', 1 if e["shift"] else 0) for w, group in windows for s, e in group])
    metric("hipcad_drift_rate_shift", "gauge", f"1 when a rate changed ({drift['rates']['test']}).",
           [(f'{{rate="{k}"}}', 1 if drift["rates"][k]["shift"] else 0) for k in ("assessed", "warned")])


bp = Blueprint("prometheus", __name__)


@bp.get("/metrics")
def metrics():
    from hipcad.appliance.drift import summary

    bundle = ctx.bundle()
    drift = summary(ctx.store(), bundle, ctx.config().drift_window_days, ctx.config().drift_recent) if bundle is not None else None
    return Response(render(ctx.store(), ctx.health(), drift), content_type=CONTENT_TYPE)
