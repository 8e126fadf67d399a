"""Fused model -> ONNX -> checked -> model bundle (``manifest.json`` + ``model.onnx`` + self-test)."""

from __future__ import annotations

import datetime as _dt
import json
import platform
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hipcad.export.fused import FRACTURE_CLASS, IMAGENET_MEAN, IMAGENET_STD, FusedCAMModel
from hipcad.export.layout_template import intended_use_entry
from hipcad.runtime.errors import HipcadError
from hipcad.runtime.model.bundle import FORMAT, MANIFEST, staged_bundle
from hipcad.runtime.model.files import sha256_file
from hipcad.runtime.model.selftest import SELFTEST_FILE, TOLERANCES, reference_inputs
from hipcad.runtime.tools.signing import sign_if_configured

OPSET = 18
TORCH_FILE = "model.pt2"
CLASS_NAMES = ["no_fracture", "fracture"]


class ExportError(HipcadError):
    """The exported graph failed its checks."""


def _export_graphs(fused: FusedCAMModel, work: Path, input_hw: tuple[int, int], with_torch: bool) -> None:
    """torch.export once (dynamic batch), then ONNX from that program; optionally keep the
    program itself as ``model.pt2`` for the PyTorch backend (parity reference, CUDA FP16)."""
    sample = torch.zeros((2, 1, *input_hw), dtype=torch.uint8)
    batch = torch.export.Dim("N", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(fused, (sample,), dynamic_shapes={"image": {0: batch}})
        onnx_program = torch.onnx.export(
            program,
            (sample,),
            dynamo=True,
            input_names=["image"],
            output_names=["logits", "cam"],
            opset_version=OPSET,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    onnx_program.save(str(work / "model.onnx"), external_data=False)
    _name_batch_dim(work / "model.onnx")
    if with_torch:
        torch.export.save(program, work / TORCH_FILE)


def _name_batch_dim(path: Path) -> None:
    """Call the dynamic batch dimension of the graph's inputs and outputs "N"."""
    import onnx

    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_param:
            dim.dim_param = "N"
    onnx.save(model, str(path))


def count_flops(fused: nn.Module, input_hw: tuple[int, int]) -> int:
    """Floating-point operations of one forward pass on one half-image (a multiply-add = 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fused(torch.zeros((1, 1, *input_hw), dtype=torch.uint8))
    return int(counter.get_total_flops())


def _torch_outputs(fused: nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        logits, cam = fused(torch.from_numpy(images))
    return logits.numpy(), cam.numpy()


def verify_onnx(fused: FusedCAMModel, onnx_path: Path, input_hw: tuple[int, int]) -> dict:
    """onnx.checker, then ONNX Runtime against PyTorch on reference inputs (batch 1 and 4)."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except Exception as err:
        raise ExportError(f"onnx.checker rejected the exported graph: {err}") from err
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    images = reference_inputs(4, input_hw, seed=1234)
    worst_logits = worst_cam = 0.0
    for batch in (images[:1], images):
        ort_logits, ort_cam = session.run(["logits", "cam"], {"image": batch})
        ref_logits, ref_cam = _torch_outputs(fused, batch)
        if ort_logits.shape != ref_logits.shape or ort_cam.shape != ref_cam.shape:
            raise ExportError(f"ONNX output shapes {ort_logits.shape}/{ort_cam.shape} differ from PyTorch's")
        worst_logits = max(worst_logits, float(np.abs(ort_logits - ref_logits).max()))
        # CAM values are small: compare relative to the map's own scale
        scale = max(float(np.abs(ref_cam).max()), 1e-12)
        worst_cam = max(worst_cam, float(np.abs(ort_cam - ref_cam).max()) / scale)
    tol = TOLERANCES["fp32"]
    if worst_logits > tol["logits"] or worst_cam > tol["cam"]:
        raise ExportError(
            f"ONNX Runtime disagrees with PyTorch: max |logits diff| {worst_logits:.2e} (limit {tol['logits']:.0e}), "
            f"max relative cam diff {worst_cam:.2e} (limit {tol['cam']:.0e})"
        )
    return {"onnxruntime_vs_torch": {"max_abs_logits": worst_logits, "max_rel_cam": worst_cam, "inputs": 5}}


CAM_COMPUTATION = {
    "pool-linear": "closed form for avg-pool + linear head: ReLU(sum_k W[1,k] A_k) / (h*w), in the forward pass",
    "fastai-concat-pool": "fastai concat-pool head: alpha_k = (g_max_k + g_avg_k) / (h*w) with the head's gradient "
    "g = s1 * W1^T([u>0] * s2 * w2[1]) written out as forward ops; ReLU(sum_k alpha_k A_k)",
}


def export_bundle(
    fused: FusedCAMModel,
    out: str | Path,
    *,
    architecture: str,
    input_hw: tuple[int, int],
    provenance: dict,
    trained: bool,
    synthetic_demo: bool = False,
    threshold: float = 0.5,
    extra: dict | None = None,
    with_torch: bool = True,
    head: str = "pool-linear",
    intended_use: dict | None = None,
    layout: tuple[dict, dict] | None = None,
) -> dict:
    """Export ``fused`` to the bundle folder ``out`` and return its manifest.

    The bundle is assembled in a temporary folder beside ``out`` and renamed into place only
    after every check passed, so a failed export never leaves a half bundle behind. Its intended
    use is the paper's (``intended_use`` overrides keys) with the layout template ``layout`` built
    from training images (:func:`hipcad.export.layout_template.build`), or hipcad's default.
    """
    out = Path(out)
    fused = fused.eval()
    with staged_bundle(out) as work:
        onnx_path = work / "model.onnx"
        _export_graphs(fused, work, input_hw, with_torch)
        verification = verify_onnx(fused, onnx_path, input_hw)
        selftest_inputs = reference_inputs(2, input_hw, seed=7)
        logits, cam = _torch_outputs(fused, selftest_inputs)
        np.savez_compressed(work / SELFTEST_FILE, image=selftest_inputs, logits=logits, cam=cam)
        cam_hw = list(cam.shape[1:])
        manifest = {
            "format": FORMAT,
            "name": out.name,
            "architecture": architecture,
            "input": {
                "name": "image",
                "dtype": "uint8",
                "shape": ["N", 1, *input_hw],
                "layout": "grayscale half-image; patient right and left hip, batch of 2 per radiograph",
                "normalisation": {"in_graph": True, "expand_channels": 3, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                                  "scale": "1/255", "source": "fastai imagenet_stats"},
            },
            "outputs": {
                "logits": {"dtype": "float32", "shape": ["N", 2]},
                "cam": {"dtype": "float32", "shape": ["N", *cam_hw]},
            },
            "compute": {"flops_per_input": count_flops(fused, input_hw), "counted_with": "torch.utils.flop_counter"},
            "class_names": CLASS_NAMES,
            "operating_points": {"default": {"threshold": threshold, "description": "probability of fracture >= threshold"}},
            "operating_point": "default",
            "cam": {
                "method": "Grad-CAM",
                "target_class": FRACTURE_CLASS,
                "target_layer": "last activation before global pooling (timm: bn2, after SiLU)",
                "head": head,
                "computation": CAM_COMPUTATION[head],
                "normalised": False,
                "reference": "pytorch-grad-cam GradCAM with ClassifierOutputTarget(1) at the same layer",
            },
            "onnx": {"file": "model.onnx", "sha256": sha256_file(onnx_path), "opset": OPSET},
            "selftest": {"file": SELFTEST_FILE, "inputs": int(selftest_inputs.shape[0])},
            "intended_use": intended_use_entry(work, intended_use, layout),
            **({"torch": {"file": TORCH_FILE, "sha256": sha256_file(work / TORCH_FILE),
                          "format": "torch.export ExportedProgram"}} if with_torch else {}),
            "trained": trained,
            "synthetic_demo": synthetic_demo,
            "clinical_use": False if (synthetic_demo or not trained) else None,
            "verification": verification,
            "provenance": {
                **provenance,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "torch": torch.__version__,
                "timm": _version("timm"),
                "onnx": _version("onnx"),
                "python": platform.python_version(),
            },
            **(extra or {}),
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        sign_if_configured(work, shown_as=Path(out))
    return manifest


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None
