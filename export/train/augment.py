"""Augmentation of half-images on the fly (flips, small affine, contrast/brightness/gamma), with the
fracture-box masks following the same geometry."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def box_masks(boxes: np.ndarray, input_hw: tuple[int, int]) -> torch.Tensor:
    """float [M, 1, H, W]: 1 inside each fracture box, 0 elsewhere (all 0 where the box is NaN)."""
    h, w = input_hw
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w) + 0.5
    b = torch.from_numpy(np.nan_to_num(boxes, nan=-1.0))
    inside = (xs >= b[:, 0, None, None]) & (xs <= b[:, 2, None, None]) & (ys >= b[:, 1, None, None]) & (ys <= b[:, 3, None, None])
    return inside.float().unsqueeze(1)


def augment(x: torch.Tensor, generator: torch.Generator, masks: torch.Tensor | None = None):
    """Random flip, small affine (scale, shift, rotation), contrast/brightness/gamma: on 0..255 floats.

    With ``masks`` ([N, 1, H, W]) the same geometric transform is applied to them and
    ``(images, masks)`` is returned."""
    n = x.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0)
    angle = (rand(n) - 0.5) * math.radians(8)
    scale = 1.0 + (rand(n) - 0.5) * 0.14
    shift = (rand(n, 2) - 0.5) * 0.10
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if masks is not None:
        masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x / 255.0
    gamma = torch.exp((rand(n, 1, 1, 1) - 0.5) * 0.5)
    x = x.clamp(0, 1) ** gamma
    contrast = 1.0 + (rand(n, 1, 1, 1) - 0.5) * 0.4
    brightness = (rand(n, 1, 1, 1) - 0.5) * 0.16
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + brightness).clamp(0, 1)
    return x * 255.0 if masks is None else (x * 255.0, masks)
