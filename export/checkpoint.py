"""Reading trained checkpoints into a timm EfficientNet.

Accepted: a timm state_dict, or a ``torch.save``d dict holding one under ``model`` or
``state_dict`` (a ``module.`` prefix from DataParallel is stripped). Checkpoints are loaded with
``weights_only=True``: a checkpoint is data, and a hostile pickle must not run code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hipcad.runtime.errors import HipcadError

NUM_CLASSES = 2


class CheckpointError(HipcadError):
    """A checkpoint cannot be read, or its shape is not one hipcad supports."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"checkpoint {path} does not exist") from err
    except Exception as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {path} holds {type(obj).__name__}, not a state_dict "
            "(expected tensors, or a dict with one under 'model' or 'state_dict')"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def create_timm(architecture: str) -> nn.Module:
    import timm

    try:
        return timm.create_model(architecture, pretrained=False, num_classes=NUM_CLASSES)
    except RuntimeError as err:  # timm raises RuntimeError for an unknown model name
        raise CheckpointError(f"unknown architecture {architecture!r}: {err}") from err


def load_timm(architecture: str, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A timm model with ``state_dict`` loaded strictly; mismatches are named in the error."""
    model = create_timm(architecture)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        found = ", ".join(list(state_dict)[:3])
        raise CheckpointError(
            f"checkpoint is not a timm {architecture} state_dict: {len(missing)} keys missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            f"found keys like {found}"
        )
    wrong = [k for k, v in state_dict.items() if v.shape != expected[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"checkpoint does not fit timm {architecture} with {NUM_CLASSES} classes: {k} has shape "
            f"{list(state_dict[k].shape)}, the model needs {list(expected[k].shape)} ({len(wrong)} such tensors)"
        )
    model.load_state_dict(state_dict)
    return model.eval()


def random_init(architecture: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_timm(architecture).eval()
