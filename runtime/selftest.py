"""Reference inputs, tolerances, and the self-test every backend runs when it loads a bundle.

The bundle carries a few reference half-images with the logits and heatmaps PyTorch computed for
them at export time. A backend whose outputs deviate beyond its precision's tolerance is refused:
an FP16 engine that overflows, a wrong preprocessing or a corrupted plan never reach a patient.
"""

from __future__ import annotations

import numpy as np

from .errors import SelfTestError

SELFTEST_FILE = "selftest.npz"

# Per precision: max |logits diff| (absolute) and max |cam diff| relative to the reference map's
# maximum. FP32 backends must agree with PyTorch to rounding; FP16 engines only approximately.
TOLERANCES = {
    "fp32": {"logits": 1e-4, "cam": 1e-3},
    "fp16": {"logits": 5e-2, "cam": 5e-2},
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


def compare(precision: str, logits: np.ndarray, cam: np.ndarray, ref_logits: np.ndarray, ref_cam: np.ndarray) -> dict:
    """Differences between outputs and references, and whether they are within tolerance."""
    tol = TOLERANCES[precision]
    d_logits = float(np.abs(logits - ref_logits).max())
    scale = np.maximum(np.abs(ref_cam).reshape(len(ref_cam), -1).max(axis=1), 1e-12)
    d_cam = float((np.abs(cam - ref_cam).reshape(len(cam), -1).max(axis=1) / scale).max())
    agree = bool(np.array_equal(logits.argmax(1), ref_logits.argmax(1)))
    ok = d_logits <= tol["logits"] and d_cam <= tol["cam"] and cam.shape == ref_cam.shape
    return {"max_abs_logits": d_logits, "max_rel_cam": d_cam, "argmax_agree": agree, "ok": ok, "tolerance": tol}


def run_selftest(backend) -> dict:
    """Run the bundle's reference inputs through an active backend; raise SelfTestError if off."""
    path = backend.bundle.file("selftest")
    if path is None or not path.is_file():
        return {"ok": True, "skipped": "bundle has no self-test data"}
    with np.load(path) as ref:
        images, ref_logits, ref_cam = ref["image"], ref["logits"], ref["cam"]
    logits, cam = backend.infer(images)
    if cam.shape != ref_cam.shape:
        raise SelfTestError(
            f"backend {backend.name!r} self-test failed: heatmap shape {list(cam.shape)} != expected {list(ref_cam.shape)}"
        )
    result = compare(backend.precision, logits, cam, ref_logits, ref_cam)
    if not result["ok"]:
        raise SelfTestError(
            f"backend {backend.name!r} ({backend.precision}) failed its self-test on the bundle's reference inputs: "
            f"max |logits diff| {result['max_abs_logits']:.3g} (limit {result['tolerance']['logits']}), "
            f"max relative heatmap diff {result['max_rel_cam']:.3g} (limit {result['tolerance']['cam']}); "
            "refusing to use it"
        )
    return result
