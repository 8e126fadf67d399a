"""What a user would write instead of hipcad: timm EfficientNet in PyTorch eager, pytorch-grad-cam's
``GradCAM`` for the heatmap (a forward and a backward pass), pydicom / Pillow at full resolution,
the image split at its centre, the overlay drawn with pytorch-grad-cam's ``show_cam_on_image``.

Same weights as the bundle (read from its ``model.pt2``) where the bundle has them; the same
inputs and the same overlay size as hipcad's pipeline. torch, timm and grad-cam are imported only
when the baseline runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from hipcad.runtime.inference.overlay import MAX_SIDE, display_size

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _load_model(bundle):
    import timm
    import torch

    model = timm.create_model(bundle.architecture, pretrained=False, num_classes=2).eval()
    note = "random weights (bundle has no model.pt2); compute is the same"
    path = bundle.file("torch")
    if path is not None and path.is_file() and bundle.manifest.get("cam", {}).get("head", "pool-linear") == "pool-linear":
        program = torch.export.load(str(path))
        state = {k.removeprefix("features.model.").replace("head.classifier.", "classifier."): v
                 for k, v in program.state_dict.items()}
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()}, strict=False)
        note = "the bundle's weights"
    return model, note


def _decode_full(path: Path) -> np.ndarray:
    """Full-resolution 8-bit grayscale, the way a script would do it."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut

        ds = pydicom.dcmread(path)
        arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            arr = arr.max() - arr
        arr = (arr - arr.min()) / max(arr.max() - arr.min(), 1e-9) * 255.0
        return arr.astype(np.uint8)
    return np.asarray(Image.open(path).convert("L"))


class Baseline:
    def __init__(self, bundle) -> None:
        from pytorch_grad_cam import GradCAM

        self.bundle = bundle
        self.model, self.weights = _load_model(bundle)
        self.cam = GradCAM(model=self.model, target_layers=[self.model.bn2])
        self.h, self.w = bundle.input_hw

    def run(self, path: Path, overlay_path: Path) -> dict[str, float]:
        import torch
        from pytorch_grad_cam.utils.image import show_cam_on_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        t = {}
        start = time.perf_counter()
        image = _decode_full(path)
        t["decode"], mark = time.perf_counter() - start, time.perf_counter()
        mid = image.shape[1] // 2
        halves = [image[:, :mid], image[:, mid:]]
        rgb = [np.asarray(Image.fromarray(h).convert("RGB").resize((self.w, self.h), Image.BILINEAR), np.float32) / 255.0
               for h in halves]
        x = torch.from_numpy(np.stack([(r - IMAGENET_MEAN) / IMAGENET_STD for r in rgb]).transpose(0, 3, 1, 2).copy())
        t["preprocess"], mark = time.perf_counter() - mark, time.perf_counter()
        heat = self.cam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * 2)
        probs = torch.softmax(self.cam.outputs.detach(), dim=1)[:, 1].numpy()
        t["inference"], mark = time.perf_counter() - mark, time.perf_counter()
        dh, dw = display_size(image.shape, MAX_SIDE)
        panels = []
        for half, cam in zip(halves, heat):
            pw = max(1, round(half.shape[1] * dw / image.shape[1]))
            base = np.asarray(Image.fromarray(half).convert("RGB").resize((pw, dh)), np.float32) / 255.0
            mask = np.asarray(Image.fromarray(cam).resize((pw, dh), Image.BILINEAR))
            panels.append(show_cam_on_image(base, mask, use_rgb=True))
        Image.fromarray(np.concatenate(panels, axis=1)).save(overlay_path)
        t["postprocess"] = time.perf_counter() - mark
        t["total"] = time.perf_counter() - start
        self.last_probabilities = probs
        return t
