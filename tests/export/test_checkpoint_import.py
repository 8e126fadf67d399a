"""Checkpoint import round trips: efficientnet_pytorch (plain and fastai Learner.save) and a fastai
cnn_learner head, each exported and compared with the source model; the fastai head's fused CAM
against pytorch-grad-cam."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from hipcad.runtime.model.selftest import reference_inputs
from tests.helpers import calibrate_batchnorm, run_cli

pytestmark = pytest.mark.heavy


def _normalise(images: np.ndarray) -> torch.Tensor:
    from hipcad.export.fused import GrayToNormalized

    return GrayToNormalized()(torch.from_numpy(images))


def _ort(bundle, images):
    import onnxruntime as ort

    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits", "cam"], {"image": images})


@pytest.fixture(scope="module")
def ept_b4():
    efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    model = efficientnet_pytorch.EfficientNet.from_name("efficientnet-b4")
    model._fc = nn.Linear(1792, 2)
    with torch.no_grad():
        model._fc.weight.normal_(0, 0.05)
    return calibrate_batchnorm(model, (380, 380))


@pytest.mark.parametrize("wrapper", ["plain", "fastai_learner_save"])
def test_efficientnet_pytorch_round_trip(ept_b4, wrapper, tmp_path):
    sd = ept_b4.state_dict()
    obj = sd if wrapper == "plain" else {"model": sd, "opt": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]}}
    ckpt = tmp_path / "ept.pth"
    torch.save(obj, ckpt)
    out = tmp_path / "bundle"
    proc = run_cli("export", str(ckpt), "--out", str(out), "--no-torch")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["architecture"] == "tf_efficientnet_b4"
    assert manifest["provenance"]["format"] == "efficientnet_pytorch"
    images = reference_inputs(4, (380, 380), seed=21)
    with torch.no_grad():
        expected = ept_b4(_normalise(images)).numpy()
    logits, _ = _ort(out, images)
    assert np.ptp(expected[:, 1]) > 1e-2, "logits must differ between inputs for the check to mean anything"
    assert np.abs(logits - expected).max() <= 1e-4


def _fastai_model(seed=0):
    """A fastai 1.0 cnn_learner-style model: Sequential(body, create_head) with a timm B0 body."""
    import timm

    from hipcad.export.heads import fastai_head

    torch.manual_seed(seed)
    net = timm.create_model("efficientnet_b0", num_classes=2)
    body = nn.Sequential(*[getattr(net, n) for n in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")])
    head = fastai_head(1280)
    with torch.no_grad():  # a trained head's BN statistics are not the identity
        for bn in (head[2], head[6]):
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.1)
    return calibrate_batchnorm(nn.Sequential(body, head), (224, 224))


def test_fastai_head_round_trip_and_grad_cam(tmp_path):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from hipcad.export.checkpoint import import_checkpoint

    source = _fastai_model()
    # fastai's body is Sequential(conv_stem, bn1, blocks, conv_head, bn2): keys 0.0..., renamed to timm's
    names = {"0": "conv_stem", "1": "bn1", "2": "blocks", "3": "conv_head", "4": "bn2"}
    sd = {}
    for key, value in source.state_dict().items():
        part, rest = key.split(".", 1)
        if part == "0":
            index, tail = rest.split(".", 1)
            sd[f"0.{names[index]}.{tail}"] = value
        else:
            sd[key] = value
    ckpt = tmp_path / "learner.pth"
    torch.save({"model": sd, "opt": {}}, ckpt)

    imported = import_checkpoint(ckpt, "efficientnet_b0")
    assert imported.kind == "fastai"
    images = reference_inputs(8, (224, 224), seed=8)
    x = _normalise(images)
    with torch.no_grad():
        expected = source(x)
        logits, cam = imported.fused(torch.from_numpy(images))
    assert np.ptp(expected.numpy()[:, 1]) > 1e-2, "logits must differ between inputs"
    assert np.abs(logits.numpy() - expected.numpy()).max() <= 1e-4

    with GradCAM(model=imported.model, target_layers=[imported.target_layer]) as gradcam:
        reference = gradcam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * len(x))
    ours = scale_cam_image(scale_cam_image(cam.numpy(), (224, 224)))
    assert reference.reshape(8, -1).max(axis=1).min() > 0.5, "degenerate reference heatmaps"
    assert np.abs(ours - reference).max() <= 1e-3

    out = tmp_path / "bundle"
    proc = run_cli("export", str(ckpt), "--arch", "efficientnet_b0", "--out", str(out), "--no-torch")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cam"]["head"] == "fastai-concat-pool" and manifest["provenance"]["format"] == "fastai"
    ort_logits, ort_cam = _ort(out, images)
    assert np.abs(ort_logits - expected.numpy()).max() <= 1e-4
    assert np.abs(ort_cam - cam.numpy()).max() <= 1e-3 * np.abs(cam.numpy()).max()


def test_unsupported_checkpoint_names_what_was_found(tmp_path):
    import timm

    torch.save(timm.create_model("resnet18", num_classes=2).state_dict(), tmp_path / "resnet.pth")
    proc = run_cli("export", str(tmp_path / "resnet.pth"), "--out", str(tmp_path / "x"))
    assert proc.returncode == 1
    assert "unsupported checkpoint" in proc.stderr and "conv1.weight" in proc.stderr
    assert "Traceback" not in proc.stderr
