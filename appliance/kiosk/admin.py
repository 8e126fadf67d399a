"""The administrator's drift monitor: ``/admin/drift`` (page) and ``/api/drift`` (JSON), from the
worker's counts in the store against the configured bundle's reference (:mod:`hipcad.appliance.drift`)."""

from __future__ import annotations


from flask import Blueprint, abort, jsonify

from hipcad.appliance import drift
from hipcad.appliance.kiosk import charts
from hipcad.appliance.kiosk import context as ctx

bp = Blueprint("admin", __name__)
TICKS = (0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99, 0.999)


def current() -> dict:
    bundle = ctx.bundle()
    if bundle is None:
        abort(404, "no model bundle is configured for the drift monitor")
    return drift.summary(ctx.store(), bundle, ctx.config().drift_window_days, ctx.config().drift_recent)


def _span(summary: dict) -> tuple[int, int]:
    """The bins worth drawing: where any of the distributions has hips, and two more each side."""
    ref = summary["reference"]
    rows = [e["histogram"] for key in ("sides", "recent_sides") for e in summary[key].values()]
    used = [i for h in rows + ([ref["histogram"]] if ref else []) for i, n in enumerate(h) if n]
    n = len(summary["edges"]) + 1
    return (max(0, min(used) - 2), min(n, max(used) + 3)) if used else (0, n)


def _ticks(summary: dict, lo: int, hi: int, calibration) -> list[tuple[float, str]]:
    """The numbers the kiosk shows, placed where their log-odds fall on the bins ``lo:hi``."""
    edges = summary["edges"]
    ticks: list[tuple[float, str]] = []
    for p in TICKS:
        position = (calibration.log_odds(p) - edges[0]) / (edges[1] - edges[0]) + 1 - lo
        if 0.5 <= position <= hi - lo - 0.5 and (not ticks or position - ticks[-1][0] >= 0.09 * (hi - lo)):
            ticks.append((position, f"{p * 100:g} %" if calibration.calibrated else f"{p:g}"))
    return ticks


def figures(summary: dict) -> dict:
    """The page's charts (inline SVG)."""
    lo, hi = _span(summary)
    ticks = _ticks(summary, lo, hi, ctx.bundle().calibration)
    ref = summary["reference"]
    out = {}
    for key, what in (("sides", f"the last {summary['window_days']} days"), ("recent_sides", "the latest hips read")):
        for side, entry in summary[key].items():
            out[f"{key}_{side}"] = charts.histogram(ref["histogram"][lo:hi] if ref else None, entry["histogram"][lo:hi],
                                                    ticks, f"patient {side} hips, {what} (blue), against the model's "
                                                    "validation (grey)")
    daily = summary["daily"]
    days = [d["day"] for d in daily]

    def share(key, of):
        return [d[key] / d[of] if d[of] else None for d in daily]
    out["studies"] = charts.series(days, [("radiographs", [float(d["studies"]) for d in daily], charts.NOW)],
                                   "radiographs per day", percent=False)
    out["rates"] = charts.series(days, [("assessed", share("assessed", "studies"), charts.NOW),
                                        ("with decode warnings", share("warned", "studies"), "#c58af9")],
                                 "share of radiographs assessed and with decode warnings, per day", top_value=1.0)
    out["positive"] = charts.series(days, [("hips called fractured", share("positives", "halves"), "#ef8a80")],
                                    "share of hips called fractured, per day",
                                    reference=ref["positive_share"] if ref else None, top_value=1.0)
    return out


@bp.get("/admin/drift")
def drift_page():
    summary = current()
    return ctx.page("admin_drift.html", drift=summary, charts=figures(summary), live=False)


@bp.get("/api/drift")
def drift_api():
    return jsonify(current())
