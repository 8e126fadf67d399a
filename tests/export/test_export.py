"""hipcad export: the ONNX graph contract, parity with PyTorch and with pytorch-grad-cam."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hipcad.runtime.model.bundle import Bundle
from hipcad.runtime.model.files import sha256_file
from hipcad.runtime.model.selftest import reference_inputs
from tests.helpers import run_cli, trained_like_b4_state_dict

pytestmark = pytest.mark.heavy


def test_manifest_records_what_the_design_asks(b4_bundle):
    manifest = json.loads((b4_bundle / "manifest.json").read_text())
    assert manifest["architecture"] == "efficientnet_b4"
    assert manifest["input"]["shape"] == ["N", 1, 380, 380]
    assert manifest["class_names"] == ["no_fracture", "fracture"]
    assert manifest["operating_points"]["default"]["threshold"] == 0.5
    assert manifest["cam"]["method"] == "Grad-CAM" and manifest["cam"]["normalised"] is False
    assert manifest["onnx"]["sha256"] == sha256_file(b4_bundle / "model.onnx")
    assert manifest["provenance"]["source"] == "checkpoint"
    assert manifest["trained"] is True and manifest["synthetic_demo"] is False
    assert manifest["verification"]["onnxruntime_vs_torch"]["max_abs_logits"] <= 1e-4


def test_onnx_graph_contract(b4_bundle):
    import onnx

    model = onnx.load(str(b4_bundle / "model.onnx"))
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.name == "image"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 380, 380]
    outputs = {o.name: o for o in model.graph.output}
    assert set(outputs) == {"logits", "cam"}
    for o in outputs.values():
        assert o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in outputs["logits"].type.tensor_type.shape.dim[1:]] == [2]
    assert [d.dim_value for d in outputs["cam"].type.tensor_type.shape.dim[1:]] == [12, 12]
    # no gradient machinery in the graph: Grad-CAM is closed-form forward ops
    assert not any("Grad" in node.op_type for node in model.graph.node)


@pytest.fixture(scope="module")
def eight_inputs():
    return reference_inputs(8, (380, 380), seed=2024)


@pytest.fixture(scope="module")
def ort_outputs(b4_bundle, eight_inputs):
    import onnxruntime as ort

    session = ort.InferenceSession(str(b4_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(["logits", "cam"], {"image": eight_inputs})


def test_onnxruntime_logits_equal_pytorch(b4_model, eight_inputs, ort_outputs):
    from hipcad.export.fused import fuse_timm

    with torch.inference_mode():
        ref_logits, ref_cam = fuse_timm(b4_model)(torch.from_numpy(eight_inputs))
    logits, cam = ort_outputs
    assert np.ptp(ref_logits.numpy()[:, 1]) > 1e-2, "logits must differ between inputs for the check to mean anything"
    assert np.abs(logits - ref_logits.numpy()).max() <= 1e-4
    assert np.abs(cam - ref_cam.numpy()).max() <= 1e-3 * np.abs(ref_cam.numpy()).max()


def test_cam_equals_pytorch_grad_cam(b4_model, eight_inputs, ort_outputs):
    """The fused heatmap equals pytorch-grad-cam's GradCAM at the same layer (bn2), class 1,
    after both are resized and min-max normalised the same way (grad-cam's own scale_cam_image)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from hipcad.export.fused import GrayToNormalized, cam_target_layer

    x = GrayToNormalized()(torch.from_numpy(eight_inputs))
    with GradCAM(model=b4_model, target_layers=[cam_target_layer(b4_model)]) as gradcam:
        reference = gradcam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * len(x))
    _, cam = ort_outputs
    ours = scale_cam_image(scale_cam_image(cam, (380, 380)))  # the same two steps GradCAM takes
    assert ours.shape == reference.shape == (8, 380, 380)
    assert reference.reshape(8, -1).max(axis=1).min() > 0.5, "degenerate reference heatmaps"
    assert np.abs(ours - reference).max() <= 1e-3


def test_checkpoint_wrappers_and_prefixes(tmp_path):
    from hipcad.export.checkpoint import load_timm, read_state_dict

    sd = trained_like_b4_state_dict(seed=1)
    variants = {
        "plain.pth": sd,
        "state_dict.pth": {"state_dict": sd, "epoch": 1},
        "dataparallel.pth": {"model": {f"module.{k}": v for k, v in sd.items()}},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        model = load_timm("efficientnet_b4", read_state_dict(tmp_path / name))
        assert torch.equal(model.classifier.weight, sd["classifier.weight"]), name


def test_wrong_checkpoints_are_refused_with_what_was_found(tmp_path):
    import timm

    imagenet_head = timm.create_model("efficientnet_b0", num_classes=1000).state_dict()
    torch.save(imagenet_head, tmp_path / "b0_1000.pth")
    proc = run_cli("export", str(tmp_path / "b0_1000.pth"), "--arch", "efficientnet_b0", "--out", str(tmp_path / "x"))
    assert proc.returncode == 1
    assert "classifier.weight has shape [1000, 1280]" in proc.stderr and "Traceback" not in proc.stderr

    torch.save({"weights": [1, 2, 3]}, tmp_path / "odd.pth")
    proc = run_cli("export", str(tmp_path / "odd.pth"), "--out", str(tmp_path / "y"))
    assert proc.returncode == 1 and "not a state_dict" in proc.stderr

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    proc = run_cli("export", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "z"))
    assert proc.returncode == 1 and "cannot read checkpoint" in proc.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_random_init_bundle_is_labelled_untrained(tmp_path):
    out = tmp_path / "rand"
    proc = run_cli("export", "--random-init", "--seed", "4", "--arch", "efficientnet_b0", "--input-size", "128",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    bundle = Bundle(out)
    assert bundle.trained is False and bundle.input_hw == (128, 128)
    assert "UNTRAINED" in bundle.label
    assert bundle.manifest["provenance"] == {**bundle.manifest["provenance"], "source": "random-init", "seed": 4}
