"""The fused model: uint8 grayscale in, logits and Grad-CAM out, in one forward pass.

For a head that is global-average-pool + linear, Grad-CAM for class ``c`` at the last
activation ``A`` (``[N, K, h, w]``, after the activation, before pooling) is closed-form:

    d y_c / d A_k(i, j) = W_ck / (h * w)          (the gradient of a mean is uniform)
    alpha_k            = mean_ij of that = W_ck / (h * w)
    cam                = ReLU(sum_k alpha_k A_k) = ReLU(sum_k W_ck A_k) / (h * w)

so the heatmap is one 1x1 "convolution" of the feature map with the class-``c`` row of the
classifier: no backward pass, no autograd in the graph. Other heads write their gradient out as
forward operations (see :mod:`hipcad.export.heads`).
"""

from __future__ import annotations

import torch
from torch import nn

# ImageNet statistics, as fastai's ``imagenet_stats`` (the paper's normalisation).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FRACTURE_CLASS = 1


class GrayToNormalized(nn.Module):
    """uint8 ``[N, 1, H, W]`` -> float ``[N, 3, H, W]`` normalised with ImageNet mean/std.

    ``(x / 255 - mean_c) / std_c`` is folded into one multiply-add per channel.
    """

    def __init__(self) -> None:
        super().__init__()
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -mean / std)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.float() * self.scale + self.shift  # broadcasts 1 channel to 3


class PoolLinearCAM(nn.Module):
    """Head = global average pool + linear: logits and the closed-form Grad-CAM of one class."""

    def __init__(self, classifier: nn.Linear, target_class: int = FRACTURE_CLASS) -> None:
        super().__init__()
        self.classifier = classifier
        self.target_class = target_class

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(features.mean(dim=(2, 3)))
        h, w = features.shape[-2:]
        weight = self.classifier.weight[self.target_class].view(1, -1, 1, 1) / (h * w)
        cam = torch.relu((features * weight).sum(dim=1))
        return logits, cam


class FusedCAMModel(nn.Module):
    """``image`` uint8 ``[N,1,H,W]`` -> (``logits`` ``[N,2]``, ``cam`` ``[N,h,w]``)."""

    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.preprocess = GrayToNormalized()
        self.features = features
        self.head = head

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.features(self.preprocess(image)))


class TimmFeatures(nn.Module):
    """A timm EfficientNet up to and including ``bn2`` (conv_head -> BN -> SiLU): the Grad-CAM layer."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def fuse_timm(model: nn.Module) -> FusedCAMModel:
    """Fused model for a timm EfficientNet with its standard avg-pool + linear head."""
    pool = getattr(model.global_pool, "pool_type", None)
    if pool != "avg" or not isinstance(model.classifier, nn.Linear):
        raise ValueError(f"timm head is {pool!r} pool + {type(model.classifier).__name__}; expected avg + Linear")
    return FusedCAMModel(TimmFeatures(model), PoolLinearCAM(model.classifier)).eval()


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The layer pytorch-grad-cam must hook to reproduce the fused CAM (timm: ``bn2``)."""
    return model.bn2
