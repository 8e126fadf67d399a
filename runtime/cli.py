"""The ``hipcad`` command line: one subcommand per job, each a ``main(argv=None) -> int``.

Subcommands live in the subpackage whose work they do and are imported only when run, so a
device without torch runs ``hipcad predict`` and answers ``hipcad export`` with what to install.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import sys
from pathlib import Path

from hipcad.runtime.errors import HipcadError

# name -> ("module:function", one-line help)
COMMANDS = {
    "export": ("hipcad.export.cli:main", "checkpoint (or --random-init) -> model bundle (ONNX with fused Grad-CAM)"),
    "train": ("hipcad.export.train:main", "fine-tune on a dataset folder (paper's half cut, split by patient) -> bundle"),
    "quantize": ("hipcad.export.quantize:main", "FP32 bundle -> INT8 bundle for CPUs (ONNX Runtime), with its agreement with FP32"),
    "build-engine": ("hipcad.runtime.backends.trt.builder:build_engine_main", "bundle -> FP16 TensorRT engine, cached per GPU / TensorRT version"),
    "predict": ("hipcad.runtime.cli:predict_main", "read radiographs: verdict per hip, heatmap overlay, timings"),
    "synth": ("hipcad.runtime.synth:synth_main", "write synthetic AP pelvis phantoms with fracture labels"),
    "gpu-check": ("hipcad.runtime.tools.gpu_check:gpu_check_main", "on an NVIDIA GPU: FP16 latency, FP16/FP32 parity, TensorRT build"),
    "bench": ("hipcad.runtime.tools.bench:bench_main", "time the whole path per radiograph vs the paper's 1.17 s (and --baseline)"),
    "evaluate": ("hipcad.runtime.evaluation.evaluate:evaluate_main", "a bundle on a labelled dataset: accuracy, sensitivity, specificity, F1, AUC (95% CI), heatmap check"),
    "reader-study": ("hipcad.runtime.evaluation.reader_study:reader_study_main", "read-first answers -> reader accuracy before/after the CAD, Wilcoxon and Fisher tests"),
    "worker": ("hipcad.appliance.worker.service:main", "watch a hot folder: durable queue, one inference thread, result store (systemd notify)"),
    "kiosk": ("hipcad.appliance.kiosk.app:main", "results screen, JSON API and /metrics over the result store (waitress; auth off loopback)"),
    "demo": ("hipcad.appliance.demo:main", "worker + kiosk on the demo model with a temporary hot folder and sample radiographs"),
    "parity": ("hipcad.runtime.tools.parity:parity_main", "compare backends on the same inputs (logits, heatmaps, verdicts)"),
}
EXTRA_FOR = {"torch": "export", "timm": "export", "onnx": "export", "flask": "appliance", "watchdog": "appliance",
             "waitress": "appliance"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: hipcad COMMAND [ARGS...]\n\nhip-fracture CAD: EfficientNet with a fused Grad-CAM heatmap\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<14}{text}")
        print("\n`hipcad COMMAND --help` describes each command.")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hipcad: unknown command {name!r}; see `hipcad --help`", file=sys.stderr)
        return 2
    module_name, _, func_name = COMMANDS[name][0].partition(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except ModuleNotFoundError as err:
        extra = EXTRA_FOR.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"hipcad {name} needs {err.name}, which is not installed: pip install 'hipcad[{extra}]'", file=sys.stderr)
        return 2
    return func(rest)


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def expand_inputs(items: list[str]) -> list[Path]:
    """Files as given (each is reported, readable or not); folders expanded to the radiographs
    inside them (sorted, recursive; files that are not DICOM, JPEG or PNG, such as a dataset's
    labels.csv, are left out)."""
    from hipcad.runtime.imaging.decode import sniff

    def is_image(path: Path) -> bool:
        try:
            with open(path, "rb") as fh:
                return sniff(fh.read(132)) is not None
        except OSError:
            return False

    paths: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            paths.extend(sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".") and is_image(q)))
        else:
            paths.append(p)
    return paths


def safe_stem(path: Path) -> str:
    """A file-name-safe stem from the input's own file name (never from a DICOM value)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "input"
    return stem[:80]


def predict_main(argv: list[str] | None = None) -> int:
    from hipcad.runtime.backends import CHOICES, open_backend
    from hipcad.runtime.model.bundle import load_bundle
    from hipcad.runtime.inference.overlay import OVERLAY_SUFFIX
    from hipcad.runtime.inference.pipeline import Pipeline

    parser = argparse.ArgumentParser(
        prog="hipcad predict",
        description="Read AP pelvis radiographs (DICOM, JPEG, PNG): fracture probability and verdict per hip, "
        "Grad-CAM heatmap overlay, per-stage timings. Exit status 0 when every input was read, 1 otherwise.",
    )
    parser.add_argument("inputs", nargs="+", metavar="FILE", help="radiograph files or folders")
    parser.add_argument("--model", metavar="BUNDLE", help="model bundle folder (default: the bundled demo model)")
    parser.add_argument("--out", metavar="DIR", help="write overlays (JPEG) and result JSON files here")
    parser.add_argument("--json", action="store_true", help="print one JSON object per input")
    parser.add_argument("--backend", default="auto", choices=CHOICES, help="inference backend (default: auto)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    try:
        bundle = load_bundle(args.model)
        backend = open_backend(args.backend, bundle)
    except HipcadError as err:
        print(f"hipcad predict: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    print(f"model: {bundle.label}; operating point: {bundle.operating_point} (threshold {bundle.threshold:g}); "
          f"backend: {backend.name} ({backend.device})", file=sys.stderr)
    if backend.fallback_reason:
        print(f"note: {backend.fallback_reason}", file=sys.stderr)
    pipeline = Pipeline(bundle, backend)
    used: set[str] = set()
    all_ok = True
    with backend:
        for path in expand_inputs(args.inputs):
            overlay = None
            if out:
                stem = safe_stem(path)
                base, n = stem, 2
                while stem in used:
                    stem, n = f"{base}-{n}", n + 1
                used.add(stem)
                overlay = out / f"{stem}.overlay{OVERLAY_SUFFIX}"
            result = pipeline.run(path, overlay)
            all_ok &= result.ok
            record = result.to_json()
            if out:
                (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            if args.json:
                print(json.dumps(record), flush=True)
            else:
                print(_human(result), flush=True)
    return 0 if all_ok else 1


def _human(result) -> str:
    if not result.ok:
        return f"{result.input}: ERROR {result.error}"
    sides = "  ".join(
        f"patient {s['side']}: {'FRACTURE' if s['fracture'] else 'no fracture'} (p={s['probability']:.3f})"
        for s in result.sides
    )
    text = f"{result.input}: {sides}  [{result.timings_ms['total']:.0f} ms]"
    if result.overlay:
        text += f"  overlay: {result.overlay}"
    for warning in result.warnings:
        text += f"\n  warning: {warning}"
    return text
