"""``hipcad quantize``: an INT8 copy of a bundle for CPU boxes, with its agreement with FP32.

ONNX Runtime static quantisation: weights per channel (int8, 7-bit range so that CPUs without
VNNI do not saturate), activations uint8 with ranges calibrated on radiographs that went through
the product's own decoding and midline split. The classifier and the Grad-CAM tail (everything
after the last convolution) stay in float, so the heatmap is computed from dequantised features
with float weights.

With ``--eval DATASET`` both bundles read the same labelled radiographs through the whole
pipeline and the INT8 bundle's manifest records AUC, accuracy and heatmap localisation of each,
verdict agreement and heatmap-peak agreement, and whether the INT8 bundle passed
(:data:`ACCEPT`). ``hipcad predict`` and the worker keep whatever bundle they are given: FP32
stays the default until an INT8 bundle has passed on the hospital's own validation set.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx  # at the top: `hipcad quantize` without it names the extra to install

from hipcad.runtime.errors import HipcadError
from hipcad.runtime.model.bundle import MANIFEST, Bundle, load_bundle, staged_bundle
from hipcad.runtime.model.files import sha256_file
from hipcad.runtime.model.selftest import SELFTEST_FILE, reference_inputs
from hipcad.runtime.tools.signing import sign_if_configured

#: an INT8 bundle passes when, against its FP32 source on the same labelled radiographs:
ACCEPT = {"auc_drop_max": 0.005, "verdict_agreement_min": 0.99, "peak_agreement_min": 0.95}
QUANTISED_OPS = ["Conv", "Mul", "Add", "Sigmoid", "ReduceMean"]


def calibration_batches(bundle, inputs: list[str], count: int) -> tuple[list[np.ndarray], list[str]]:
    """Up to ``count`` preprocessed batches ([2, 1, H, W] uint8), decoded and split as at run time."""
    from hipcad.runtime.imaging.decode import decode
    from hipcad.runtime.inference.pipeline import min_decode_side
    from hipcad.runtime.inference.preprocess import prepare
    from hipcad.runtime.predict import expand_inputs

    batches, skipped = [], []
    for path in expand_inputs(inputs):
        if len(batches) >= count:
            break
        try:
            radiograph = decode(path, min_side=min_decode_side(bundle.input_hw))
            batches.append(prepare(radiograph, bundle.input_hw).batch)
        except HipcadError as err:
            skipped.append(f"{Path(path).name}: {err}")
    return batches, skipped


def _tail_nodes(model) -> list[str]:
    """Names of the nodes after the last convolution (graph order is topological in ONNX)."""
    last = max(i for i, node in enumerate(model.graph.node) if node.op_type == "Conv")
    return [node.name for node in model.graph.node[last + 1 :]]


def quantize_onnx(src: Path, dst: Path, batches: list[np.ndarray]) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self):
            batch = next(self.items, None)
            return None if batch is None else {"image": batch}

    with tempfile.TemporaryDirectory(prefix="hipcad-quantize-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre))
        excluded = _tail_nodes(onnx.load(str(pre)))
        quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=QUANTISED_OPS, nodes_to_exclude=excluded)
    onnx.checker.check_model(str(dst), full_check=True)
    return {"method": "onnxruntime static quantisation", "format": "QOperator", "weights": "int8 per channel, 7-bit range",
            "activations": "uint8, MinMax calibration", "ops": QUANTISED_OPS, "float_tail_nodes": len(excluded)}


def agreement(fp32, int8, dataset_path: str) -> dict:
    """Both bundles on one labelled dataset through the whole pipeline (ONNX Runtime CPU)."""
    from hipcad.runtime.backends import open_backend
    from hipcad.runtime.evaluation.dataset import load_dataset
    from hipcad.runtime.evaluation.evaluate import localisation, score_dataset
    from hipcad.runtime.evaluation.stats import binary_metrics
    from hipcad.runtime.inference.pipeline import Pipeline

    dataset = load_dataset(dataset_path)
    scored = {}
    for key, bundle in (("fp32", fp32), ("int8", int8)):
        with open_backend("onnxruntime", bundle, device="cpu") as backend:
            rows, *_ = score_dataset(Pipeline(bundle, backend), dataset)
        scored[key] = {(r["file"], r["side"]): r for r in rows}
    keys = sorted(set(scored["fp32"]) & set(scored["int8"]))
    if not keys:
        raise HipcadError(f"no radiograph of {dataset_path} could be read")
    a, b = ([scored[k][key] for key in keys] for k in ("fp32", "int8"))
    y = np.array([r["truth"] for r in a])
    unread = {k: len(dataset) * 2 - len(scored[k]) for k in scored}
    out = {"dataset": Path(dataset_path).name, "halves": len(keys), "halves_unread": unread}
    for name, rows in (("fp32", a), ("int8", b)):
        m = binary_metrics(y, np.array([r["probability"] for r in rows]), threshold=fp32.threshold, n_bootstrap=0)
        out[name] = {"auc": m["auc"]["value"], "accuracy": m["accuracy"]["value"],
                     "cam_localization_sensitivity": localisation(rows)["sensitivity"]}
    p_a, p_b = np.array([r["probability"] for r in a]), np.array([r["probability"] for r in b])
    out["verdict_agreement"] = float(np.mean([r["predicted"] == s["predicted"] for r, s in zip(a, b)]))
    out["peak_agreement"] = float(np.mean([r["peak_box"] == s["peak_box"] for r, s in zip(a, b)]))
    out["probability_abs_diff"] = {"max": float(np.abs(p_a - p_b).max()), "mean": float(np.abs(p_a - p_b).mean())}
    out["criteria"] = ACCEPT
    out["passed"] = bool(out["fp32"]["auc"] - out["int8"]["auc"] <= ACCEPT["auc_drop_max"]
                         and out["verdict_agreement"] >= ACCEPT["verdict_agreement_min"]
                         and out["peak_agreement"] >= ACCEPT["peak_agreement_min"])
    return out


def quantize_bundle(src_path: str, out: str, calibration: list[str], count: int, eval_dataset: str | None) -> dict:
    import onnxruntime as ort

    src = load_bundle(src_path)
    if src.precision != "fp32":
        raise HipcadError(f"{src.path} is already {src.precision}; quantise its FP32 source")
    src.verified_onnx_bytes  # noqa: B018 - refuse a bundle whose ONNX does not match its manifest
    batches, skipped = calibration_batches(src, calibration, count)
    if not batches:
        raise HipcadError("no calibration radiograph could be read" + (f" ({skipped[0]})" if skipped else ""))
    out_path = Path(out)
    with staged_bundle(out_path) as work:
        start = time.time()
        method = quantize_onnx(src.onnx_path, work / "model.onnx", batches)
        session = ort.InferenceSession(str(work / "model.onnx"), providers=["CPUExecutionProvider"])
        images = reference_inputs(2, src.input_hw, seed=7)
        logits, cam = session.run(["logits", "cam"], {"image": images})
        np.savez_compressed(work / SELFTEST_FILE, image=images, logits=logits, cam=cam)
        # the files table is the source's: signing fills in this bundle's own
        manifest = {k: v for k, v in src.manifest.items() if k not in ("torch", "verification", "files")}
        if "intended_use" in manifest:  # the eligibility layout template travels with the intended use
            shutil.copyfile(src.intended_use["content"]["layout_template"],  # resolved inside the bundle, hash checked
                            work / Path(manifest["intended_use"]["content"]["layout_template"]).name)
        manifest.update({
            "name": out_path.name,
            "precision": "int8",
            "onnx": {**src.manifest["onnx"], "sha256": sha256_file(work / "model.onnx")},
            "selftest": {"file": SELFTEST_FILE, "inputs": 2, "reference": "onnxruntime CPU on this INT8 model"},
            "quantization": {**method, "source": {"name": src.name, "onnx_sha256": src.onnx_sha256},
                             "calibration": {"radiographs": len(batches), "halves": 2 * len(batches), "skipped": skipped},
                             "seconds": round(time.time() - start, 1)},
        })
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if eval_dataset:
            manifest["quantization"]["agreement"] = agreement(src, Bundle(work), eval_dataset)  # ours, not yet signed
            (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        sign_if_configured(work, shown_as=Path(out_path))
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hipcad quantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="FP32 model bundle")
    parser.add_argument("--out", required=True, metavar="BUNDLE", help="INT8 bundle folder to write")
    parser.add_argument("--calibration", required=True, nargs="+", metavar="PATH",
                        help="radiographs (files or folders) to calibrate activation ranges on; not the evaluation set")
    parser.add_argument("--images", type=int, default=64, metavar="N", help="calibration radiographs to use (default 64)")
    parser.add_argument("--eval", metavar="DATASET", help="labelled dataset: compare INT8 with FP32 and record it")
    args = parser.parse_args(argv)
    try:
        manifest = quantize_bundle(args.bundle, args.out, args.calibration, args.images, args.eval)
    except HipcadError as err:
        print(f"hipcad quantize: {err}", file=sys.stderr)
        return 1
    q = manifest["quantization"]
    print(f"wrote {args.out}: INT8, calibrated on {q['calibration']['radiographs']} radiographs")
    if "agreement" in q:
        print(json.dumps(q["agreement"], indent=2))
    else:
        print("not compared with FP32 (no --eval): keep using the FP32 bundle until an --eval run passes")
    return 0
