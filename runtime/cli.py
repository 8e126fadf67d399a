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
    "layout-template": ("hipcad.export.layout_template:main", "rebuild a bundle's eligibility layout template from radiographs it is for"),
    "quantize": ("hipcad.export.quantize:main", "FP32 bundle -> INT8 bundle for CPUs (ONNX Runtime), with its agreement with FP32"),
    "build-engine": ("hipcad.runtime.tools.build_engine:main", "bundle -> FP16 TensorRT engine, cached per GPU / TensorRT version"),
    "predict": ("hipcad.runtime.predict:main", "read radiographs: verdict per hip, heatmap overlay, timings"),
    "synth": ("hipcad.runtime.synth.cli:main", "write synthetic AP pelvis phantoms with fracture labels"),
    "gpu-check": ("hipcad.runtime.tools.gpu_check:main", "the first run on an NVIDIA GPU: every backend's precision, parity, latency -> one JSON report"),
    "bench": ("hipcad.runtime.tools.bench:main", "time the whole path per radiograph vs the paper's 1.17 s (and --baseline)"),
    "evaluate": ("hipcad.runtime.evaluation.evaluate:main", "a bundle on a labelled dataset: accuracy, sensitivity, specificity, F1, AUC (95% CI), heatmap check"),
    "calibrate": ("hipcad.runtime.evaluation.calibrate:main", "fit a bundle's probability calibration on a labelled validation set (temperature scaling)"),
    "reader-study": ("hipcad.runtime.evaluation.reader_study:main", "read-first answers -> reader accuracy before/after the CAD, Wilcoxon and Fisher tests"),
    "worker": ("hipcad.appliance.worker.cli:main", "watch a hot folder: durable queue, one inference thread, result store (systemd notify)"),
    "kiosk": ("hipcad.appliance.kiosk.cli:main", "results screen, JSON API and /metrics over the result store (cheroot, HTTPS; named readers)"),
    "demo": ("hipcad.appliance.demo:main", "worker + kiosk on the demo model with a temporary hot folder and sample radiographs"),
    "parity": ("hipcad.runtime.tools.parity:main", "compare backends on the same inputs (logits, heatmaps, verdicts)"),
    "triton-repo": ("hipcad.runtime.serving.repository:main", "bundle -> Triton Inference Server model repository (onnxruntime, tensorrt or python)"),
    "serve": ("hipcad.runtime.serving.serve:main", "serve a bundle from a CPU tritonserver (NVIDIA PyTriton's) for the boxes of a region"),
    "keygen": ("hipcad.runtime.tools.signing:main_keygen", "make an Ed25519 key pair for signing model bundles"),
    "sign": ("hipcad.runtime.tools.signing:main_sign", "sign a model bundle (every file hashed in the manifest, manifest signed)"),
    "verify": ("hipcad.runtime.tools.signing:main_verify", "check a bundle as a box would: signed by a trusted key, files as signed"),
}
# the extra that installs a missing top-level package
EXTRA_FOR = {"torch": "export", "torchvision": "export", "timm": "export", "onnx": "export", "onnxscript": "export",
             "flask": "appliance", "watchdog": "appliance", "cheroot": "appliance", "pynetdicom": "appliance",
             "highdicom": "appliance", "tensorrt": "tensorrt", "pycuda": "tensorrt", "onnxruntime": "cpu|gpu",
             "tritonclient": "triton", "pytriton": "serve"}


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
        extras = " or ".join(f"pip install 'hipcad[{e}]'" for e in extra.split("|"))
        print(f"hipcad {name} needs {err.name}, which is not installed: {extras}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of our output went away (`hipcad predict --json ... | head`): stop quietly, as
        # the Python docs advise (point stdout at devnull so the interpreter's final flush is silent)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
