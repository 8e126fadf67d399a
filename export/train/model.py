"""The network being trained: the fused CAM model plus the box-supervision heads (a training aid,
not exported), and what training needs to know about its feature maps."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hipcad.export.fused import GrayToNormalized
from hipcad.export.train.augment import box_masks


class Classifier(nn.Module):
    """uint8-range floats -> logits, with the same normalisation the exported graph applies."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.preprocess = GrayToNormalized()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))


def _feature_hw(model: nn.Module, size: int) -> tuple[int, int]:
    was_training = model.training
    model.eval()  # a probe must not move BatchNorm statistics
    try:
        with torch.no_grad():
            return tuple(model.forward_features(torch.zeros(1, 3, size, size)).shape[-2:])
    finally:
        model.train(was_training)


def _negatives_per_positive(boxes: np.ndarray, input_hw: tuple[int, int], cells_hw, chunk: int = 256) -> float:
    """Negative / positive feature-map cells over the training halves (the BCE's pos_weight);
    halves without a box are all negative, the others are rasterised a chunk at a time."""
    boxed = boxes[np.isfinite(boxes).all(axis=1)]
    per_half = int(np.prod(cells_hw))
    positives = sum(float(_cell_targets(box_masks(boxed[i : i + chunk], input_hw), cells_hw).sum())
                    for i in range(0, len(boxed), chunk))
    return (len(boxes) * per_half - positives) / max(positives, 1.0)


def _cell_targets(masks: torch.Tensor, hw) -> torch.Tensor:
    """1 for feature-map cells at least 15 % covered by a fracture box, else 0."""
    return (F.adaptive_avg_pool2d(masks, tuple(hw)) >= 0.15).float()


def predict_logits(classifier: Classifier, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The fracture log-odds ``l1 - l0`` per half (what the runtime's calibration and reference use)."""
    classifier.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = torch.from_numpy(images[i : i + batch]).float().contiguous(memory_format=torch.channels_last)
            logits = classifier(x).double()
            out.append((logits[:, 1] - logits[:, 0]).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def predict_probs(classifier: Classifier, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The softmax probability of fracture per half."""
    return 1.0 / (1.0 + np.exp(-predict_logits(classifier, images, batch)))
