"""``hipcad parity``: the same inputs through several backends; do they agree?"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import numpy as np

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.model.selftest import TOLERANCES, compare_outputs, reference_inputs


def gather_inputs(bundle, files: list[str], count: int) -> np.ndarray:
    """Reference half-images, plus the two halves of each radiograph file given."""
    from hipcad.runtime.imaging.decode import decode
    from hipcad.runtime.inference.preprocess import prepare

    batches = [reference_inputs(count, bundle.input_hw, seed=99)] if count else []
    for f in files:
        batches.append(prepare(decode(f), bundle.input_hw).batch)
    if not batches:
        raise HipcadError("no inputs: give --count > 0 or radiograph files")
    return np.concatenate(batches)


def main(argv: list[str] | None = None) -> int:
    from hipcad.runtime.backends import CHOICES, open_backend, triton
    from hipcad.runtime.model.bundle import load_bundle

    parser = argparse.ArgumentParser(
        prog="hipcad parity",
        description="Run the same inputs through several backends and compare logits, heatmaps and verdicts. "
        "Tolerances follow the looser precision of each pair (FP32: 1e-4 logits, 1e-3 relative heatmap; "
        "FP16: 5e-2 both). Exit status 0 when every pair agrees, 1 when one does not, 2 when a backend cannot run.",
    )
    parser.add_argument("bundle", help="model bundle folder")
    parser.add_argument("--backends", default="onnxruntime,torch",
                        help="comma-separated, e.g. tensorrt,onnxruntime,torch or triton,onnxruntime")
    parser.add_argument("--count", type=int, default=8, help="reference half-images to compare (default 8)")
    parser.add_argument("--inputs", nargs="*", default=[], metavar="FILE", help="radiographs whose halves are compared too")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    triton.add_arguments(parser)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    bad = [n for n in names if n not in CHOICES]
    if len(names) < 2 or bad:
        parser.error(f"--backends needs two or more of {', '.join(CHOICES)}" + (f"; unknown: {', '.join(bad)}" if bad else ""))

    outputs, info = {}, {}
    try:
        bundle = load_bundle(args.bundle)
        images = gather_inputs(bundle, args.inputs, args.count)
        for name in names:
            with open_backend(name, bundle, **triton.options_from_args(args, name, tuple(names))) as backend:
                outputs[name] = backend.infer(images)
                info[name] = {"backend": backend.name, "device": backend.device, "precision": backend.precision,
                              "precision_note": backend.precision_note}
                if name == "auto":
                    print(f"auto chose {backend.name} ({backend.device})", file=sys.stderr)
    except HipcadError as err:
        print(f"hipcad parity: {err}", file=sys.stderr)
        return 2
    pairs = {}
    for a, b in itertools.combinations(names, 2):
        # the looser of the two precisions' tolerances
        precision = max((info[a]["precision"], info[b]["precision"]), key=lambda p: TOLERANCES[p]["logits"])
        pairs[f"{a} vs {b}"] = compare_outputs(outputs[a], outputs[b], bundle.threshold, precision, bundle.calibration)
    agree = all(p["agree"] for p in pairs.values())
    report = {"bundle": bundle.name, "inputs": int(len(images)), "backends": info, "pairs": pairs, "agree": agree}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        used = ", ".join(f"{n} ({i['device']}, {i['precision']})" for n, i in info.items())
        print(f"{len(images)} half-images through {used}")
        for pair, r in pairs.items():
            print(f"{pair}: logits max {r['logits_max_abs']:.2e} mean {r['logits_mean_abs']:.2e}; heatmap max {r['cam_max_rel']:.2e} "
                  f"mean {r['cam_mean_rel']:.2e} (relative); verdicts agree {r['verdict_agreement']:.1%} -> "
                  f"{'AGREE' if r['agree'] else 'DISAGREE'} at {r['precision']} tolerance")
    return 0 if agree else 1
