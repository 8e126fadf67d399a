"""``hipcad evaluate``: a bundle on a labelled dataset, with the paper's figures.

Every radiograph goes through the product's own pipeline (decode, midline split, inference),
so the figures are those of the box, not of a training script. Per half: accuracy,
sensitivity, specificity, F1 and AUC with 95 % confidence intervals, the ROC curve, the
confusion matrix, the misclassified halves, and the paper's heatmap check:

- localisation sensitivity: on correctly detected fractured halves with a box, the hottest
  heatmap cell overlaps the fracture box;
- localisation specificity: on correctly cleared halves with a ``neck_trochanter`` region, the
  hottest cell's centre lies outside the femoral neck and trochanter.

(The paper scored 20 + 20 correctly diagnosed images by eye; here every eligible half is scored.)
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
from hipcad.runtime.evaluation.dataset import Box, load_dataset
from hipcad.runtime.evaluation.roc_plot import render_roc_png
from hipcad.runtime.evaluation.stats import binary_metrics, roc_curve, threshold_for_sensitivity, threshold_for_specificity
from hipcad.runtime.model.bundle import MANIFEST


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


def score_dataset(pipeline, dataset, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Per-half rows and the list of radiographs that could not be read."""
    from tqdm import tqdm

    rows, failures = [], []
    jobs = ((rec.path, None) for rec in dataset)
    results = pipeline.run_many(jobs)
    for rec, result in tqdm(zip(dataset, results), total=len(dataset), desc="evaluating", unit="image",
                            file=sys.stderr, disable=None if progress else True):
        if not result.ok:
            failures.append({"file": rec.file, "error": result.error})
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
                "predicted": int(side.fracture),
                "peak_box": list(side.heatmap_peak_box),
                "peak_in_box": (peak.intersection(label.box) > 0) if label.fracture and label.box else None,
                "peak_outside_neck": (not region.contains(Box(cx, cy, cx, cy))) if (not label.fracture and region) else None,
            })
    return rows, failures


def write_operating_points(bundle, y, p, target_sens: float, target_spec: float, dataset_name: str, select: str | None) -> dict:
    points = dict(bundle.manifest.get("operating_points") or {})
    for name, fn, target in (("high_sensitivity", threshold_for_sensitivity, target_sens),
                             ("high_specificity", threshold_for_specificity, target_spec)):
        op = fn(y, p, target)
        points[name] = {"threshold": float(op["threshold"]), "target": target,
                        "achieved": {"sensitivity": op["sensitivity"], "specificity": op["specificity"]},
                        "chosen_on": dataset_name, "n_halves": int(len(y)),
                        "description": f"{name.replace('_', ' ')}: threshold chosen for {target:.0%} on {dataset_name}"}
    manifest = dict(bundle.manifest, operating_points=points)
    if select:
        if select not in points:
            raise HipcadError(f"unknown operating point {select!r}; defined: {', '.join(points)}")
        manifest["operating_point"] = select
    atomic_write(bundle.path / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
    from hipcad.runtime.tools.signing import sign_if_configured

    sign_if_configured(bundle.path)  # the manifest changed: its old signature no longer matches
    return points


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
    parser.add_argument("--operating-points", action="store_true",
                        help="choose thresholds for the target sensitivity and specificity on this (validation) set and "
                        "write them into the bundle's manifest")
    parser.add_argument("--target-sensitivity", type=float, default=0.98)
    parser.add_argument("--target-specificity", type=float, default=0.98)
    parser.add_argument("--select", metavar="NAME", help="with --operating-points: make this operating point the one in use")
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.model)
        dataset = load_dataset(args.dataset)
        backend = open_backend(args.backend, bundle)
    except (HipcadError, ValueError) as err:
        print(f"hipcad evaluate: {err}", file=sys.stderr)
        return 2
    print(f"model: {bundle.label}; operating point {bundle.operating_point} (threshold {bundle.threshold:g}); "
          f"backend: {backend.name} ({backend.device})", file=sys.stderr)
    with backend:
        rows, failures = score_dataset(Pipeline(bundle, backend), dataset, progress=not args.json)
    if not rows:
        print("hipcad evaluate: no radiograph could be read", file=sys.stderr)
        return 1
    y = np.array([r["truth"] for r in rows])
    p = np.array([r["probability"] for r in rows])
    report = binary_metrics(y, p, threshold=bundle.threshold)
    report["cam_localization"] = localisation(rows)
    report["model"] = bundle.describe()
    report["dataset"] = {"path": str(args.dataset), "radiographs": len(dataset), "halves": len(rows), "unreadable": failures}
    report["misclassified"] = [{k: r[k] for k in ("file", "side", "truth", "probability")} for r in rows if r["truth"] != r["predicted"]]
    if args.operating_points:
        try:
            report["operating_points"] = write_operating_points(bundle, y, p, args.target_sensitivity, args.target_specificity,
                                                                Path(args.dataset).name, args.select)
        except (HipcadError, ValueError) as err:
            print(f"hipcad evaluate: {err}", file=sys.stderr)
            return 2
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        fpr, tpr, _ = roc_curve(y, p)
        render_roc_png(fpr, tpr, report["auc"]["value"], out / "roc.png", auc_ci=report["auc"]["ci95"],
                       title=f"ROC - {bundle.name}")
        with open(out / "predictions.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        with open(out / "misclassified.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["file", "side", "truth", "probability"])
            writer.writeheader()
            writer.writerows(report["misclassified"])
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(report))
    else:
        print(_table(report))
    return 0


def _table(report: dict) -> str:
    def fmt(m):
        if m["value"] is None:
            return "n/a"
        lo, hi = m["ci95"]
        return f"{m['value']:.3f} (95% CI {lo:.3f}-{hi:.3f})" if lo is not None else f"{m['value']:.3f}"

    c = report["confusion"]
    loc = report["cam_localization"]
    lines = [f"{report['n']} halves of {report['dataset']['radiographs']} radiographs "
             f"({len(report['dataset']['unreadable'])} unreadable); threshold {report['threshold']:g}"]
    for key in ("accuracy", "sensitivity", "specificity", "f1", "auc"):
        lines.append(f"  {key:<12}{fmt(report[key])}")
    lines.append(f"  confusion   TP {c['tp']}  FN {c['fn']}  FP {c['fp']}  TN {c['tn']}")
    lines.append(f"  heatmap     localisation sensitivity {loc['sensitivity']} (n={loc['n_fractured']}), "
                 f"specificity {loc['specificity']} (n={loc['n_not_fractured']})")
    lines.append(f"  misclassified: {len(report['misclassified'])}")
    return "\n".join(lines)
