"""The ``hipcad`` command line: one subcommand per job, each a ``main(argv=None) -> int``.

Subcommands live in the subpackage whose work they do and are imported only when run, so a
device without torch runs ``hipcad predict`` and answers ``hipcad export`` with what to install.
"""

from __future__ import annotations

import importlib
import os
import sys

# name -> ("module:function", one-line help)
COMMANDS = {
    "export": ("hipcad.export.cli:main", "checkpoint (or --random-init) -> model bundle (ONNX with fused Grad-CAM)"),
    "train": ("hipcad.export.train.cli:main", "fine-tune on a dataset folder (paper's half cut, split by patient) -> bundle"),
    "quantize": ("hipcad.export.quantize:main", "FP32 bundle -> INT8 bundle for CPUs (ONNX Runtime), with its agreement with FP32"),
    "build-engine": ("hipcad.runtime.tools.build_engine:main", "bundle -> FP16 TensorRT engine, cached per GPU / TensorRT version"),
    "predict": ("hipcad.runtime.predict:main", "read radiographs: verdict per hip, heatmap overlay, timings"),
    "synth": ("hipcad.runtime.synth.cli:main", "write synthetic AP pelvis phantoms with fracture labels"),
    "gpu-check": ("hipcad.runtime.tools.gpu_check:main", "on an NVIDIA GPU: FP16 latency, FP16/FP32 parity, TensorRT build"),
    "bench": ("hipcad.runtime.tools.bench:main", "time the whole path per radiograph vs the paper's 1.17 s (and --baseline)"),
    "evaluate": ("hipcad.runtime.evaluation.evaluate:main", "a bundle on a labelled dataset: accuracy, sensitivity, specificity, F1, AUC (95% CI), heatmap check"),
    "calibrate": ("hipcad.runtime.evaluation.calibrate:main", "fit a bundle's probability calibration on a labelled validation set (temperature scaling)"),
    "reader-study": ("hipcad.runtime.evaluation.reader_study:main", "read-first answers -> reader accuracy before/after the CAD, Wilcoxon and Fisher tests"),
    "worker": ("hipcad.appliance.worker.cli:main", "watch a hot folder: durable queue, one inference thread, result store (systemd notify)"),
    "kiosk": ("hipcad.appliance.kiosk.cli:main", "results screen, JSON API and /metrics over the result store (waitress; auth off loopback)"),
    "demo": ("hipcad.appliance.demo:main", "worker + kiosk on the demo model with a temporary hot folder and sample radiographs"),
    "parity": ("hipcad.runtime.tools.parity:main", "compare backends on the same inputs (logits, heatmaps, verdicts)"),
}
# the extra that installs a missing top-level package
EXTRA_FOR = {"torch": "export", "torchvision": "export", "timm": "export", "onnx": "export", "onnxscript": "export",
             "flask": "appliance", "watchdog": "appliance", "waitress": "appliance", "pynetdicom": "appliance",
             "highdicom": "appliance", "tensorrt": "tensorrt", "pycuda": "tensorrt"}


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
        # a missing optional package can surface when the command's module is imported or, for
        # imports made inside its functions, while it runs: either way the user learns what to install
        return getattr(importlib.import_module(module_name), func_name)(rest)
    except ModuleNotFoundError as err:
        extra = EXTRA_FOR.get((err.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"hipcad {name} needs {err.name}, which is not installed: pip install 'hipcad[{extra}]'", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of our output went away (`hipcad predict --json ... | head`): stop quietly, as
        # the Python docs advise (point stdout at devnull so the interpreter's final flush is silent)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
