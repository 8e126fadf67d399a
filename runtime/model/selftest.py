"""Reference inputs, tolerances, and the self-test every backend runs when it loads a bundle.

The bundle carries a few reference half-images with the logits and heatmaps PyTorch computed for
them at export time. A backend whose outputs deviate beyond its precision's tolerance is refused:
an FP16 engine that overflows, a wrong preprocessing or a corrupted plan never reach a patient.
"""

from __future__ import annotations

import numpy as np

from hipcad.runtime.errors import SelfTestError

SELFTEST_FILE = "selftest.npz"

# Per precision: max |logits diff| (absolute) and max |cam diff| relative to the reference map's
# maximum. FP32 backends must agree with PyTorch to rounding; FP16 engines only approximately.
TOLERANCES = {
    "fp32": {"logits": 1e-4, "cam": 1e-3},
    "fp16": {"logits": 5e-2, "cam": 5e-2},
    # FP32 asked for, but TF32 (a 10-bit mantissa, as FP16's) could not be shown to be off
    # (see hipcad.runtime.backends.tf32): no tighter than FP16
    "tf32": {"logits": 5e-2, "cam": 5e-2},
    # INT8 bundles carry references computed by ONNX Runtime CPU on the INT8 model itself; other
    # CPUs' integer kernels round the same, float parts of the graph may differ slightly
    "int8": {"logits": 5e-3, "cam": 5e-3},
}


def reference_inputs(count: int, input_hw: tuple[int, int], seed: int) -> np.ndarray:
    """Deterministic radiograph-like uint8 half-images ``[count, 1, H, W]``: smooth bright
    shapes on a darker background, with noise, so every layer sees realistic activations."""
    rng = np.random.default_rng(seed)
    h, w = input_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((count, 1, h, w), dtype=np.uint8)
    for i in range(count):
        img = 40 + 60 * (yy / h) + rng.normal(0, 6, (h, w))
        for _ in range(3):
            cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
            r = rng.uniform(0.08, 0.25) * min(h, w)
            img += rng.uniform(60, 120) * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)))
        out[i, 0] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def compare_outputs(a: tuple, b: tuple, threshold: float, precision: str, calibration=None) -> dict:
    """Differences between two backends' (logits, cam) on the same inputs, and whether they are
    within ``precision``'s tolerance: max and mean |logits diff|, max and mean heatmap diff
    relative to each reference map's maximum, and the share of equal verdicts at ``threshold``
    (on the scale of the bundle's ``calibration``, as the verdicts are made)."""
    from hipcad.runtime.inference.verdict import UNCALIBRATED

    (la, ca), (lb, cb) = a, b
    tol = TOLERANCES[precision]
    if ca.shape != cb.shape or la.shape != lb.shape:
        return {"precision": precision, "tolerance": tol, "agree": False,
                "error": f"shapes differ: logits {list(la.shape)} vs {list(lb.shape)}, cam {list(ca.shape)} vs {list(cb.shape)}"}
    scale = np.maximum(np.abs(ca).reshape(len(ca), -1).max(axis=1), 1e-12)[:, None, None]
    rel_cam = np.abs(ca - cb) / scale
    d_logits = np.abs(la - lb)
    calibration = calibration or UNCALIBRATED
    verdict_a = calibration.probability(la) >= threshold
    verdict_b = calibration.probability(lb) >= threshold
    result = {
        "precision": precision,
        "tolerance": tol,
        "logits_max_abs": float(d_logits.max()),
        "logits_mean_abs": float(d_logits.mean()),
        "cam_max_rel": float(rel_cam.max()),
        "cam_mean_rel": float(rel_cam.mean()),
        "verdict_agreement": float((verdict_a == verdict_b).mean()),
    }
    result["agree"] = bool(result["logits_max_abs"] <= tol["logits"] and result["cam_max_rel"] <= tol["cam"])
    return result


def run_selftest(backend) -> dict:
    """Run the bundle's reference inputs through an active backend; raise SelfTestError if off."""
    import io

    data = backend.bundle.member_bytes("selftest")  # checked against the manifest's files table
    if data is None:
        raise SelfTestError(f"bundle {backend.bundle.path} has no self-test data (selftest.npz): a backend cannot be "
                            "checked against it, so it is not used; re-export the bundle")
    with np.load(io.BytesIO(data)) as ref:
        images, ref_logits, ref_cam = ref["image"], ref["logits"], ref["cam"]
    result = compare_outputs((ref_logits, ref_cam), backend.infer(images), backend.bundle.threshold, backend.precision,
                             backend.bundle.calibration)
    if "error" in result:
        raise SelfTestError(f"backend {backend.name!r} self-test failed: {result['error']}; refusing to use it")
    if not result["agree"]:
        raise SelfTestError(
            f"backend {backend.name!r} ({backend.precision}) failed its self-test on the bundle's reference inputs: "
            f"max |logits diff| {result['logits_max_abs']:.3g} (limit {result['tolerance']['logits']}), "
            f"max relative heatmap diff {result['cam_max_rel']:.3g} (limit {result['tolerance']['cam']}); "
            "refusing to use it"
        )
    return result
