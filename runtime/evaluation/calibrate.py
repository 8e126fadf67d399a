"""``hipcad calibrate BUNDLE DATASET``: fit the bundle's calibration on a site's labelled radiographs.

Every radiograph of the dataset goes through the product's pipeline; the fracture log-odds of
its halves and their labels fit a temperature (or Platt's temperature and bias; see
:mod:`.calibration`), which is written into the bundle's manifest with the figures before and
after, the operating points converted to the new scale (the same halves are called fractured
as before), and these halves' log-odds as the bundle's reference distribution (what the box's
drift monitor compares with). Fit on a validation set and evaluate on other radiographs: figures
on the set that was fitted on are optimistic.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.evaluation.calibration import METHODS, calibrated_manifest, fit_calibration, summary
from hipcad.runtime.evaluation.dataset import load_dataset
from hipcad.runtime.model.bundle import MANIFEST
from hipcad.runtime.model.reference import make_reference
from hipcad.runtime.tools.signing import rewrite_manifest

MIN_HALVES = 20  # per class: fewer cannot pin a calibration down


def calibrate(bundle, dataset_path: str, rows: list[dict], method: str, source: str) -> dict:
    """The new manifest for ``bundle`` from evaluate's per-half ``rows`` of the dataset at ``dataset_path``."""
    y = np.array([r["truth"] for r in rows])
    d = np.array([r["logit"] for r in rows], dtype=np.float64)
    counts = {"fractured": int(y.sum()), "intact": int(len(y) - y.sum())}
    if min(counts.values()) < MIN_HALVES:
        raise HipcadError(f"{dataset_path}: {counts['fractured']} fractured and {counts['intact']} intact halves were "
                          f"assessed; calibration needs at least {MIN_HALVES} of each")
    fit = fit_calibration(d, y, method)
    current = (bundle.calibration.temperature, bundle.calibration.bias)
    before, after = summary(y, d, fit, current)
    fitted_on = {"dataset": Path(dataset_path).name, "radiographs": len({r["file"] for r in rows}),
                 "halves": len(rows), **{f"{k}_halves": v for k, v in counts.items()}, "by": source}
    synth = Path(dataset_path) / "synth.json"  # phantoms: say which, so the fit can be repeated
    if synth.is_file():
        made = json.loads(synth.read_text(encoding="utf-8"))
        fitted_on["phantoms"] = {k: made.get(k) for k in ("generator", "seed", "start", "count", "size", "subtlety")}
    name = Path(dataset_path).name
    return calibrated_manifest(bundle.manifest, fit, fitted_on, before, after,
                               reference=make_reference(d, y, f"{source} on {name}"))


def main(argv: list[str] | None = None) -> int:
    from hipcad.runtime.backends import CHOICES, open_backend
    from hipcad.runtime.evaluation.evaluate import score_dataset
    from hipcad.runtime.inference.pipeline import Pipeline
    from hipcad.runtime.model.bundle import load_bundle

    parser = argparse.ArgumentParser(prog="hipcad calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="model bundle to calibrate (its manifest is rewritten)")
    parser.add_argument("dataset", help="labelled dataset folder (labels.csv + images): a validation set, not the test set")
    parser.add_argument("--method", choices=METHODS, default="temperature",
                        help="temperature (one parameter; the default) or platt (temperature and bias)")
    parser.add_argument("--backend", default="auto", choices=CHOICES)
    parser.add_argument("--dry-run", action="store_true", help="fit and report, but leave the bundle unchanged")
    parser.add_argument("--json", action="store_true", help="print the new calibration entry as JSON")
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
        dataset = load_dataset(args.dataset)
        with open_backend(args.backend, bundle) as backend:
            rows, failures, not_assessed = score_dataset(Pipeline(bundle, backend), dataset, progress=not args.json)
        manifest = calibrate(bundle, args.dataset, rows, args.method, "hipcad calibrate")
    except (HipcadError, ValueError) as err:
        print(f"hipcad calibrate: {err}", file=sys.stderr)
        return 2
    entry = manifest["calibration"]
    if not args.dry_run:
        rewrite_manifest(bundle.path, manifest)
    if args.json:
        print(json.dumps(entry))
    else:
        b, a = entry["before"], entry["after"]
        print(f"{entry['method']} scaling on {entry['fitted_on']['halves']} halves of {args.dataset} "
              f"({len(failures)} unreadable, {len(not_assessed)} not assessed): temperature {entry['temperature']:.4g}, "
              f"bias {entry['bias']:.4g}")
        print(f"  log loss {b['log_loss']:.4f} -> {a['log_loss']:.4f}; ECE {b['ece']:.4f} -> {a['ece']:.4f}; "
              f"Brier {b['brier']:.4f} -> {a['brier']:.4f} (on the set it was fitted on)")
        for name, point in manifest["operating_points"].items():
            before = bundle.manifest["operating_points"][name]["threshold"]
            print(f"  operating point {name}: threshold {before:.4g} -> {point['threshold']:.4g} (same verdicts)")
        print("  bundle unchanged (--dry-run)" if args.dry_run else f"  written to {bundle.path / MANIFEST}")
    return 0
