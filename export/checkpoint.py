"""Reading trained checkpoints into a fused model (logits + Grad-CAM in one forward pass).

Accepted shapes, each as a plain state_dict or a ``torch.save``d dict holding one under ``model``
(fastai ``Learner.save``: ``{'model': ..., 'opt': ...}``) or ``state_dict``; a ``module.`` prefix
from DataParallel is stripped:

- ``timm``: a timm EfficientNet (``conv_stem.weight`` ... ``classifier.weight``) with 2 classes;
- ``efficientnet_pytorch``: lukemelas' EfficientNet (``_conv_stem.weight`` ... ``_fc.weight``) whose
  ``_fc`` was replaced by a 2-class Linear. Its TF-"same" padding and BatchNorm eps 1e-3 are timm's
  ``tf_efficientnet_bX``, into which the weights are renamed one to one;
- ``fastai``: ``nn.Sequential(body, head)`` from ``cnn_learner``: a body in either naming above under
  ``0.`` and fastai's concat-pool head under ``1.`` (see :mod:`hipcad.export.heads`).

Checkpoints are loaded with ``weights_only=True``: a checkpoint is data, and a hostile pickle must
not run code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hipcad.export.fused import FusedCAMModel, PoolLinearCAM, TimmFeatures
from hipcad.export.heads import FastaiHeadCAM, fastai_head
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


# timm block sub-module -> efficientnet_pytorch name, per timm block type
_EPT_BLOCK = {
    "DepthwiseSeparableConv": {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "se.conv_reduce": "_se_reduce",
                               "se.conv_expand": "_se_expand", "conv_pw": "_project_conv", "bn2": "_bn2"},
    "InvertedResidual": {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                         "se.conv_reduce": "_se_reduce", "se.conv_expand": "_se_expand", "conv_pwl": "_project_conv",
                         "bn3": "_bn2"},
}
_EPT_TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}


def efficientnet_pytorch_names(model: nn.Module) -> dict[str, str]:
    """timm ``tf_efficientnet_bX`` state_dict key -> the efficientnet_pytorch key of the same tensor."""
    block_names, flat = {}, 0
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            block_names[f"blocks.{s}.{i}"] = (flat, _EPT_BLOCK[type(block).__name__])
            flat += 1
    names = {}
    for key in model.state_dict():
        module, _, tensor = key.rpartition(".")
        m = re.match(r"(blocks\.\d+\.\d+)\.(.+)", module)
        if m:
            index, table = block_names[m.group(1)]
            names[key] = f"_blocks.{index}.{table[m.group(2)]}.{tensor}"
        else:
            names[key] = f"{_EPT_TOP[module]}.{tensor}"
    return names


@dataclass
class ImportedModel:
    kind: str  # "timm" | "efficientnet_pytorch" | "fastai"
    architecture: str  # timm name of the network body
    model: nn.Module  # the whole classifier, for reference logits and pytorch-grad-cam
    fused: FusedCAMModel
    target_layer: nn.Module  # the layer whose activation the CAM is computed at
    notes: list[str] = field(default_factory=list)


def _found(keys) -> str:
    keys = list(keys)
    return f"{len(keys)} tensors, keys like {', '.join(keys[:4])}"


def _body_to_timm(family: str, body: dict[str, torch.Tensor], with_classifier: bool) -> tuple[nn.Module, str, list[str]]:
    """A timm model holding ``body`` (timm or efficientnet_pytorch naming)."""
    notes: list[str] = []
    if any(k.startswith("_conv_stem.") for k in body):
        architecture = "tf_" + family.removeprefix("tf_")
        model = create_timm(architecture)
        names = efficientnet_pytorch_names(model)
        if not with_classifier:
            names = {k: v for k, v in names.items() if not k.startswith("classifier.")}
        missing = [v for v in names.values() if v not in body]
        if missing:
            raise CheckpointError(
                f"checkpoint looks like efficientnet_pytorch but does not fit {architecture}: "
                f"{len(missing)} tensors missing (e.g. {missing[:3]}); found {_found(body)}"
            )
        renamed = {k: body[v] for k, v in names.items()}
        notes.append(f"efficientnet_pytorch weights renamed one to one into timm {architecture} (TF 'same' padding, BN eps 1e-3)")
    elif any(k.startswith("conv_stem.") for k in body):
        architecture, renamed = family, dict(body)
    else:
        raise CheckpointError(f"unsupported checkpoint: the network body is neither timm nor efficientnet_pytorch EfficientNet; found {_found(body)}")
    if not with_classifier:
        reference = create_timm(architecture).state_dict()
        renamed.update({k: v for k, v in reference.items() if k.startswith("classifier.")})
    return load_timm(architecture, renamed), architecture, notes


def import_checkpoint(path: str | Path, family: str = "efficientnet_b4") -> ImportedModel:
    """Read any supported checkpoint shape into a fused model (see the module docstring)."""
    state = read_state_dict(path)
    if "1.8.weight" in state and any(k.startswith("0.") for k in state):
        body = {k[2:]: v for k, v in state.items() if k.startswith("0.")}
        head_sd = {k[2:]: v for k, v in state.items() if k.startswith("1.")}
        model, architecture, notes = _body_to_timm(family, body, with_classifier=False)
        features = TimmFeatures(model)
        nf, hidden = head_sd["2.weight"].shape[0] // 2, head_sd["4.weight"].shape[0]
        head = fastai_head(nf, hidden, head_sd["8.weight"].shape[0])
        try:
            head.load_state_dict(head_sd)
        except RuntimeError as err:
            raise CheckpointError(f"fastai head does not have the cnn_learner layout (BN, Dropout, Linear, ReLU, BN, Dropout, Linear): {err}") from err
        if head_sd["8.weight"].shape[0] != NUM_CLASSES:
            raise CheckpointError(f"fastai head has {head_sd['8.weight'].shape[0]} classes; hipcad needs {NUM_CLASSES}")
        head.eval()
        notes.append("fastai cnn_learner head: Grad-CAM gradient written out as forward ops")
        return ImportedModel("fastai", architecture, nn.Sequential(features, head).eval(),
                             FusedCAMModel(features, FastaiHeadCAM(head)).eval(), model.bn2, notes)
    if any(k.startswith(("_conv_stem.", "conv_stem.")) for k in state):
        model, architecture, notes = _body_to_timm(family, state, with_classifier=True)
        kind = "efficientnet_pytorch" if "_conv_stem.weight" in state else "timm"
        return ImportedModel(kind, architecture, model, FusedCAMModel(TimmFeatures(model), PoolLinearCAM(model.classifier)).eval(),
                             model.bn2, notes)
    raise CheckpointError(
        f"unsupported checkpoint {Path(path).name}: {_found(state)}; supported: timm EfficientNet, "
        "efficientnet_pytorch EfficientNet with a 2-class _fc, fastai cnn_learner (body + concat-pool head)"
    )
