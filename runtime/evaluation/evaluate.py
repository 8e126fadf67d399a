"""``hipcad evaluate``: a bundle on a labelled dataset, with the paper's figures and what a site needs.

Every radiograph goes through the product's own pipeline (decode, eligibility, midline split,
inference), so the figures are those of the box, not of a training script. Per half: accuracy,
sensitivity, specificity, F1 and AUC with 95 % confidence intervals, the ROC curve, the
confusion matrix, the misclassified halves, and the paper's heatmap check:

- localisation sensitivity: on correctly detected fractured halves with a box, the hottest
  heatmap cell overlaps the fracture box;
- localisation specificity: on correctly cleared halves with a ``neck_trochanter`` region, the
  hottest cell's centre lies outside the femoral neck and trochanter.

(The paper scored 20 + 20 correctly diagnosed images by eye; here every eligible half is scored.)
Beyond the paper: the same figures per subgroup of every attribute column of labels.csv
(:mod:`.subgroups`), calibration (:mod:`.calibration`), every operating point of the bundle on
this set, and how many radiographs were not assessed and why. ``--report DIR`` writes all of it
as one self-contained HTML page for a site's acceptance (:mod:`.report`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from hipcad.runtime.durable import atomic_write
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.evaluation.calibration import calibration_metrics
from hipcad.runtime.evaluation.dataset import Box, load_dataset
from hipcad.runtime.evaluation.roc_plot import render_roc_png
from hipcad.runtime.evaluation.stats import (
    CI_METHODS,
    binary_metrics,
    confusion_counts,
    rates_from_confusion,
    roc_curve,
    threshold_for_sensitivity,
    threshold_for_specificity,
)
from hipcad.runtime.evaluation.subgroups import subgroup_analysis
from hipcad.runtime.inference.verdict import log_odds_probability

#: Sato et al. 2021, "Artificial intelligence improves the accuracy of residents in the diagnosis of
#: hip fractures: a multicenter study": EfficientNet-B4 on a test set of 1000 halves (500 fractured)
PAPER = {
    "source": "Sato et al. 2021, multicenter study (EfficientNet-B4; test set of 1000 halves, 500 fractured)",
    "n": 1000,
    "accuracy": {"value": 0.961, "ci95": [0.949, 0.973]},
    "sensitivity": {"value": 0.952, "ci95": [0.939, 0.965]},
    "specificity": {"value": 0.969, "ci95": [0.958, 0.980]},
    "f1": {"value": 0.961, "ci95": [0.950, 0.972]},
    "auc": {"value": 0.99, "ci95": [0.98, 1.00]},
    "cam_localization": {"sensitivity": 1.0, "specificity": 0.95, "n_fractured": 20, "n_not_fractured": 20},
}
FIGURES = ("accuracy", "sensitivity", "specificity", "f1", "auc")


def localisation(rows: list[dict]) -> dict:
    hits_frac = [r["peak_in_box"] for r in rows if r["truth"] == 1 and r["predicted"] == 1 and r["peak_in_box"] is not None]
    hits_neg = [r["peak_outside_neck"] for r in rows if r["truth"] == 0 and r["predicted"] == 0 and r["peak_outside_neck"] is not None]
    return {
        "sensitivity": float(np.mean(hits_frac)) if hits_frac else None,
        "specificity": float(np.mean(hits_neg)) if hits_neg else None,
        "n_fractured": len(hits_frac),
        "n_not_fractured": len(hits_neg),
        "definition": "hottest CAM cell overlaps the fracture box (fractured halves); its centre lies outside the "
        "neck_trochanter region (non-fractured halves); correctly classified halves only, as in the paper",
    }


def score_dataset(pipeline, dataset, progress: bool = True) -> tuple[list[dict], list[dict], list[dict]]:
    """Per-half rows, the radiographs that could not be read, and those read but not assessed
    (not eligible: the model is not for them; with their reasons)."""
    from tqdm import tqdm

    rows, failures, not_assessed = [], [], []
    jobs = ((rec.path, None) for rec in dataset)
    results = pipeline.run_many(jobs)
    for rec, result in tqdm(zip(dataset, results), total=len(dataset), desc="evaluating", unit="image",
                            file=sys.stderr, disable=None if progress else True):
        if not result.ok:
            failures.append({"file": rec.file, "error": result.error})
            continue
        if not result.eligible:
            reasons = (result.eligibility or {}).get("reasons") or ["not eligible"]
            not_assessed.append({"file": rec.file, "reasons": list(reasons)})
            continue
        for side in result.sides:
            label = rec.sides[side.side]
            peak = Box(*side.heatmap_peak_box)
            cx, cy = peak.center
            region = rec.region(side.side)
            rows.append({
                "file": rec.file,
                "side": side.side,
                "truth": int(label.fracture),
                "probability": side.probability,
                "logit": side.logit,
                "predicted": int(side.fracture),
                "peak_box": list(side.heatmap_peak_box),
                "peak_in_box": (peak.intersection(label.box) > 0) if label.fracture and label.box else None,
                "peak_outside_neck": (not region.contains(Box(cx, cy, cx, cy))) if (not label.fracture and region) else None,
                "attributes": {c: rec.attribute(side.side, c) for c in dataset.attribute_levels},
            })
    return rows, failures, not_assessed


def eligibility_summary(dataset, failures: list[dict], not_assessed: list[dict]) -> dict:
    """How many radiographs were assessed, not assessed (by their first reason) and unreadable."""
    by_reason: dict[str, int] = {}
    for item in not_assessed:
        by_reason[item["reasons"][0]] = by_reason.get(item["reasons"][0], 0) + 1
    total = len(dataset)
    assessed = total - len(failures) - len(not_assessed)
    return {"radiographs": total, "assessed": assessed, "not_assessed": len(not_assessed), "unreadable": len(failures),
            "assessed_share": assessed / total if total else None,
            "by_reason": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0])))}


def operating_point_table(bundle, y: np.ndarray, p: np.ndarray, ci_method: str = "wald") -> dict:
    """Every operating point of the bundle on these halves: its threshold and the sensitivity and
    specificity (with intervals) it gives here."""
    out = {}
    for name, point in (bundle.manifest.get("operating_points") or {}).items():
        threshold = float(point["threshold"])
        confusion = confusion_counts(y, p >= threshold)
        rates = rates_from_confusion(**confusion, ci_method=ci_method)
        out[name] = {"threshold": threshold, "in_use": name == bundle.operating_point,
                     "sensitivity": rates["sensitivity"], "specificity": rates["specificity"],
                     "confusion": confusion,
                     **{k: point[k] for k in ("target", "chosen_on", "description") if k in point}}
    return out


def calibration_section(bundle, y: np.ndarray, p: np.ndarray, logits: np.ndarray) -> dict:
    """Calibration of the numbers shown; for a calibrated bundle also of its raw softmax."""
    cal = bundle.calibration
    out = {"calibrated": cal.calibrated, **calibration_metrics(y, p)}
    entry = bundle.manifest.get("calibration") or {}
    out.update(method=entry.get("method"), temperature=cal.temperature, bias=cal.bias, fitted_on=entry.get("fitted_on"))
    if cal.calibrated:
        raw = calibration_metrics(y, log_odds_probability(logits))
        out["uncalibrated"] = {k: raw[k] for k in ("ece", "brier", "log_loss")}
    return out


def build_report(bundle, dataset, dataset_path: str, rows: list[dict], failures: list[dict], not_assessed: list[dict],
                 *, strata: list[str] | None = None, ci_method: str = "wald") -> dict:
    y = np.array([r["truth"] for r in rows])
    p = np.array([r["probability"] for r in rows])
    report = binary_metrics(y, p, threshold=bundle.threshold, ci_method=ci_method)
    report["cam_localization"] = localisation(rows)
    report["model"] = {**bundle.describe(), "provenance": bundle.manifest.get("provenance") or {},
                       "onnx_sha256": bundle.onnx_sha256,
                       "training": {k: v for k, v in (bundle.manifest.get("training") or {}).items() if k != "history"}}
    report["dataset"] = {"path": str(dataset_path), "name": Path(dataset_path).name, **dataset.summary(),
                         "radiographs": len(dataset), "halves": len(rows), "attributes": dict(dataset.attribute_levels),
                         "unreadable": failures, "not_assessed": not_assessed}
    report["eligibility"] = eligibility_summary(dataset, failures, not_assessed)
    report["calibration"] = calibration_section(bundle, y, p, np.array([r["logit"] for r in rows]))
    report["operating_points"] = operating_point_table(bundle, y, p, ci_method)
    report["subgroups"] = subgroup_analysis(rows, dataset.attribute_levels, bundle.threshold, ci_method=ci_method,
                                            columns=strata)
    report["paper"] = PAPER
    report["misclassified"] = [{k: r[k] for k in ("file", "side", "truth", "probability")}
                               for r in rows if r["truth"] != r["predicted"]]
    report["n_misclassified"] = len(report["misclassified"])
    return report


def write_operating_points(bundle, y, p, target_sens: float, target_spec: float, dataset_name: str, select: str | None) -> dict:
    points = dict(bundle.manifest.get("operating_points") or {})
    scale = "calibrated probability" if bundle.calibration.calibrated else "uncalibrated score"
    for name, fn, target in (("high_sensitivity", threshold_for_sensitivity, target_sens),
                             ("high_specificity", threshold_for_specificity, target_spec)):
        op = fn(y, p, target)
        points[name] = {"threshold": float(op["threshold"]), "target": target,
                        "achieved": {"sensitivity": op["sensitivity"], "specificity": op["specificity"]},
                        "chosen_on": dataset_name, "n_halves": int(len(y)), "scale": scale,
                        "description": f"{name.replace('_', ' ')}: threshold chosen for {target:.0%} on {dataset_name}"}
    manifest = dict(bundle.manifest, operating_points=points)
    if select:
        if select not in points:
            raise HipcadError(f"unknown operating point {select!r}; defined: {', '.join(points)}")
        manifest["operating_point"] = select
    from hipcad.runtime.tools.signing import rewrite_manifest

    rewrite_manifest(bundle.path, manifest)
    return points


def write_outputs(out: Path, report: dict, rows: list[dict], bundle) -> None:
    """report.json, roc.png, predictions.csv and misclassified.csv in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    y = np.array([r["truth"] for r in rows])
    p = np.array([r["probability"] for r in rows])
    fpr, tpr, _ = roc_curve(y, p)
    render_roc_png(fpr, tpr, report["auc"]["value"], out / "roc.png", auc_ci=report["auc"]["ci95"],
                   title=f"ROC - {bundle.name}")
    columns = list(report["dataset"]["attributes"])
    with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=[k for k in rows[0] if k != "attributes"] + columns)
        writer.writeheader()
        writer.writerows({**{k: v for k, v in r.items() if k != "attributes"},
                          **{c: r["attributes"].get(c) or "" for c in columns}} for r in rows)
    with open(out / "misclassified.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "side", "truth", "probability"])
        writer.writeheader()
        writer.writerows(report["misclassified"])
    atomic_write(out / "report.json", (json.dumps(report, indent=2) + "\n").encode("utf-8"), durable=False)


def main(argv: list[str] | None = None) -> int:
    from hipcad.runtime.backends import CHOICES, open_backend
    from hipcad.runtime.inference.pipeline import Pipeline
    from hipcad.runtime.model.bundle import load_bundle

    parser = argparse.ArgumentParser(prog="hipcad evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="dataset folder (labels.csv [+ regions.csv] + images)")
    parser.add_argument("--model", metavar="BUNDLE", help="model bundle (default: the bundled demo model)")
    parser.add_argument("--backend", default="auto", choices=CHOICES)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--out", metavar="DIR", help="write report.json, roc.png, predictions.csv, misclassified.csv here")
    parser.add_argument("--report", metavar="DIR", help="write the site acceptance report here: report.html (self-contained, "
                        "for reading offline) and the report.json whose figures it shows")
    parser.add_argument("--pdf", action="store_true", help="with --report: also print report.pdf with chromium")
    parser.add_argument("--strata", metavar="COLUMNS", help="comma-separated labels.csv attribute columns to report "
                        "subgroups for (default: every extra column)")
    parser.add_argument("--ci", choices=CI_METHODS, default="wald", help="interval of the proportions (default wald, the paper's)")
    parser.add_argument("--operating-points", action="store_true",
                        help="choose thresholds for the target sensitivity and specificity on this (validation) set and "
                        "write them into the bundle's manifest")
    parser.add_argument("--target-sensitivity", type=float, default=0.98)
    parser.add_argument("--target-specificity", type=float, default=0.98)
    parser.add_argument("--select", metavar="NAME", help="with --operating-points: make this operating point the one in use")
    args = parser.parse_args(argv)
    strata = [c.strip().lower() for c in args.strata.split(",") if c.strip()] if args.strata else None
    try:
        bundle = load_bundle(args.model)
        dataset = load_dataset(args.dataset)
        unknown = [c for c in strata or () if c not in dataset.attribute_levels]
        if unknown:
            raise HipcadError(f"--strata: labels.csv has no column {', '.join(unknown)} "
                              f"(its attribute columns: {', '.join(dataset.attribute_levels) or 'none'})")
        backend = open_backend(args.backend, bundle)
    except (HipcadError, ValueError) as err:
        print(f"hipcad evaluate: {err}", file=sys.stderr)
        return 2
    print(f"model: {bundle.label}; operating point {bundle.operating_point} (threshold {bundle.threshold:g}); "
          f"backend: {backend.name} ({backend.device})", file=sys.stderr)
    with backend:
        pipeline = Pipeline(bundle, backend)
        rows, failures, not_assessed = score_dataset(pipeline, dataset, progress=not args.json)
        if not rows:
            print("hipcad evaluate: no radiograph could be assessed", file=sys.stderr)
            return 1
        try:
            if args.operating_points:
                y, p = np.array([r["truth"] for r in rows]), np.array([r["probability"] for r in rows])
                write_operating_points(bundle, y, p, args.target_sensitivity, args.target_specificity,
                                       Path(args.dataset).name, args.select)
                bundle = load_bundle(bundle.path)
                pipeline = Pipeline(bundle, backend)  # the report's thumbnails show the verdicts of the point now in use
                for r in rows:  # as the verdict code calls a half (verdict.side_verdicts), at the new threshold
                    r["predicted"] = int(r["probability"] >= bundle.threshold)
            report = build_report(bundle, dataset, args.dataset, rows, failures, not_assessed, strata=strata,
                                  ci_method=args.ci)
            if args.out:
                write_outputs(Path(args.out), report, rows, bundle)
            if args.report:
                from hipcad.runtime.evaluation.report import write_report

                written = write_report(Path(args.report), report, rows, dataset, pipeline, pdf=args.pdf)
                print(f"report: {', '.join(str(p) for p in written)}", file=sys.stderr)
        except (HipcadError, ValueError, OSError) as err:
            print(f"hipcad evaluate: {err}", file=sys.stderr)
            return 2
    print(json.dumps(report) if args.json else _table(report))
    return 0


def _fmt(m: dict) -> str:
    if m.get("value") is None:
        return "n/a"
    lo, hi = m["ci95"]
    return f"{m['value']:.3f} (95% CI {lo:.3f}-{hi:.3f})" if lo is not None else f"{m['value']:.3f}"


def _table(report: dict) -> str:
    c = report["confusion"]
    loc = report["cam_localization"]
    el = report["eligibility"]
    lines = [f"{report['n']} halves of {el['assessed']} assessed radiographs ({el['not_assessed']} not assessed, "
             f"{el['unreadable']} unreadable); threshold {report['threshold']:g}"]
    for key in FIGURES:
        lines.append(f"  {key:<12}{_fmt(report[key])}   paper {report['paper'][key]['value']:g}")
    lines.append(f"  confusion   TP {c['tp']}  FN {c['fn']}  FP {c['fp']}  TN {c['tn']}")
    lines.append(f"  heatmap     localisation sensitivity {loc['sensitivity']} (n={loc['n_fractured']}), "
                 f"specificity {loc['specificity']} (n={loc['n_not_fractured']})")
    cal = report["calibration"]
    lines.append(f"  calibration ECE {_fmt(cal['ece'])}, Brier {_fmt(cal['brier'])}"
                 + (f" ({cal['method']} scaling, T={cal['temperature']:.3g})" if cal["calibrated"] else " (uncalibrated)"))
    for test in report["subgroups"]["tests"]:
        lines.append(f"  subgroups   {test['attribute']}: {test['metric']} differs? p={test['p_value']:.3g} "
                     f"(Holm {test['p_holm']:.3g}; {test['test']})")
    lines.append(f"  misclassified: {len(report['misclassified'])}")
    return "\n".join(lines)
