"""Heads other than avg-pool + linear, with their Grad-CAM gradient written out as forward ops.

fastai's ``cnn_learner`` head (fastai 1.0 ``create_head``)::

    AdaptiveConcatPool2d (cat[max, avg]) -> Flatten -> BN1d -> Dropout -> Linear -> ReLU -> BN1d -> Dropout -> Linear

In eval mode every BatchNorm is an affine map ``z * s + t`` and dropout is the identity, so for the
fracture logit ``y`` and pooled features ``p = [max_k, avg_k]``::

    u      = W1 (s1 * p + t1) + b1                 (hidden pre-activation)
    dy/dp  = s1 * W1^T ([u > 0] * s2 * w2)          (w2: the class-1 row of the last Linear)

The gradient of an average pool is spread evenly (``g_avg / (h*w)`` at every cell); a max pool
sends ``g_max`` to the arg-max cell only, whose spatial *mean* is again ``g_max / (h*w)``. Grad-CAM's
channel weights are the spatial means of the gradient, so exactly::

    alpha_k = (g_max_k + g_avg_k) / (h*w),   cam = ReLU(sum_k alpha_k A_k)

All of it is forward arithmetic on values the head computes anyway: no backward pass in the graph.
"""

from __future__ import annotations

import torch
from torch import nn

from hipcad.export.fused import FRACTURE_CLASS


class AdaptiveConcatPool2d(nn.Module):
    """fastai's pooling: max and average, concatenated (max first)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.amax(x, dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)


def fastai_head(nf: int, hidden: int = 512, n_classes: int = 2, p1: float = 0.25, p2: float = 0.5) -> nn.Sequential:
    """The module layout of fastai 1.0 ``create_head(nf * 2, n_classes)`` (state_dict keys 2, 4, 6, 8)."""
    return nn.Sequential(
        AdaptiveConcatPool2d(), nn.Flatten(),
        nn.BatchNorm1d(2 * nf), nn.Dropout(p1), nn.Linear(2 * nf, hidden), nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden), nn.Dropout(p2), nn.Linear(hidden, n_classes),
    )


def _affine(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class FastaiHeadCAM(nn.Module):
    """Logits of a fastai head and the exact Grad-CAM of one class at the head's input."""

    def __init__(self, head: nn.Sequential, target_class: int = FRACTURE_CLASS) -> None:
        super().__init__()
        self.head = head.eval()
        self.target_class = target_class

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, _, bn1, _, lin1, _, bn2, _, lin2 = self.head
        c = features.shape[1]
        h, w = features.shape[-2:]
        pooled = torch.cat([torch.amax(features, dim=(2, 3)), features.mean(dim=(2, 3))], dim=1)
        s1, t1 = _affine(bn1)
        s2, t2 = _affine(bn2)
        u = lin1(pooled * s1 + t1)
        hidden = torch.relu(u)
        logits = lin2(hidden * s2 + t2)
        grad_hidden = (u > 0).to(features.dtype) * (s2 * lin2.weight[self.target_class])
        grad_pooled = (grad_hidden @ lin1.weight) * s1  # [N, 2C]
        alpha = (grad_pooled[:, :c] + grad_pooled[:, c:]) / (h * w)
        cam = torch.relu((features * alpha[:, :, None, None]).sum(dim=1))
        return logits, cam
