"""Shared fixtures. The expensive one, an exported EfficientNet-B4 bundle, is made once per run."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

from tests.helpers import FAKES, run_cli, trained_like_b4_state_dict


def _test_signing_key() -> None:
    """Every bundle the suite makes (export, train, quantize, through the CLI or not) is signed with a
    test key, and every load trusts it: the same environment a workstation and a box would have
    (HIPCAD_SIGNING_KEY where bundles are made, HIPCAD_TRUSTED_KEYS where they are loaded)."""
    from hipcad.runtime.tools.signing import keygen

    folder = Path(tempfile.mkdtemp(prefix="hipcad-test-keys-"))
    atexit.register(shutil.rmtree, folder, True)
    key, pub, _ = keygen(folder / "private", "test-signer", None)
    (folder / "trusted").mkdir()
    shutil.copy(pub, folder / "trusted" / pub.name)
    os.environ["HIPCAD_SIGNING_KEY"] = str(key)
    os.environ["HIPCAD_TRUSTED_KEYS"] = str(folder / "trusted")
    os.environ.pop("HIPCAD_ALLOW_UNSIGNED_BUNDLES", None)


_test_signing_key()


@pytest.fixture(scope="session")
def b4_checkpoint(tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "b4.pth"
    torch.save({"model": trained_like_b4_state_dict(), "epoch": 3}, path)
    return path


@pytest.fixture(scope="session")
def b4_bundle(tmp_path_factory, b4_checkpoint) -> Path:
    """One EfficientNet-B4 bundle (380x380) per test run, exported through the real CLI."""
    out = tmp_path_factory.mktemp("bundles") / "b4"
    proc = run_cli("export", str(b4_checkpoint), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="session")
def b4_model(b4_checkpoint):
    """The PyTorch model the bundle was exported from."""
    from hipcad.export.checkpoint import load_timm, read_state_dict

    return load_timm("efficientnet_b4", read_state_dict(b4_checkpoint))


FAKE_TOPS = ("tensorrt", "pycuda", "_fakerecord")


def _fake_modules() -> dict:
    return {name: module for name, module in sys.modules.items() if name.split(".")[0] in FAKE_TOPS}


@pytest.fixture
def fake_gpu():
    """The recording fakes of ``tensorrt`` and ``pycuda`` (tests/fakes, see its README) first on
    sys.path for this test only: ``import tensorrt`` gets the fake, and afterwards whatever was
    imported before (a real TensorRT, or nothing) is back. Yields ``(tensorrt, pycuda.driver)``, both
    reset; fails the test when a thread ended with a CUDA context still pushed (real pycuda aborts)."""
    saved = _fake_modules()
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(FAKES))
    try:
        import pycuda.driver as cuda
        import tensorrt as trt

        assert Path(trt.__file__).is_relative_to(FAKES) and Path(cuda.__file__).is_relative_to(FAKES)
        trt.FAKE.reset()
        trt.RECORD.clear()
        cuda.FAKE.reset()
        cuda._fake_reset()
        with warnings.catch_warnings():
            # ILayer.precision & co. are deprecated since TensorRT 10.12 (a warning per call, as the real module)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield trt, cuda
        assert cuda.ABORTS == [], "a thread ended with a pycuda context still pushed"
    finally:
        sys.path.remove(str(FAKES))
        for name in _fake_modules():
            del sys.modules[name]
        sys.modules.update(saved)


def demo_variant(out: Path, *, onnx_doc: str | None = None, operating_point: str | None = None) -> Path:
    """A copy of the demo bundle that is another model: a different ONNX file (same graph, another
    doc string, so another sha256) or another operating point."""
    import hashlib
    import json
    import shutil

    from hipcad.runtime.model.bundle import DEFAULT_BUNDLE

    shutil.copytree(DEFAULT_BUNDLE, out)
    manifest = json.loads((out / "manifest.json").read_text())
    if onnx_doc is not None:
        import onnx

        model = onnx.load(out / "model.onnx")
        model.doc_string = onnx_doc
        onnx.save(model, out / "model.onnx")
        manifest["onnx"]["sha256"] = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
    if operating_point is not None:
        manifest["operating_points"][operating_point] = {"threshold": 0.25}
        manifest["operating_point"] = operating_point
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    from hipcad.runtime.tools.signing import sign_if_configured

    sign_if_configured(out)  # another model: signed by the run's test key, as its maker would
    return out


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory):
    """One real tritonserver for the run (`hipcad serve` of the server venv) serving the demo bundle
    as ``hipcad_demo``, and, in the same repository, two other models: ``impostor`` (another ONNX
    file) and ``other_point`` (the demo with another operating point)."""
    from hipcad.runtime.model.bundle import DEFAULT_BUNDLE, load_bundle
    from hipcad.runtime.serving.repository import write_repository
    from tests.helpers import Serve, triton_env

    triton_env()  # skip (or fail under `make test`) before making anything
    work = tmp_path_factory.mktemp("triton")
    repo = work / "repository"
    write_repository(load_bundle(demo_variant(work / "impostor", onnx_doc="another model")), repo, "python",
                     model_name="impostor", ort_threads=1)
    write_repository(load_bundle(demo_variant(work / "other", operating_point="high_sensitivity")), repo, "python",
                     model_name="other_point", ort_threads=1)
    server = Serve(DEFAULT_BUNDLE, work, "--repo", str(repo)).start()
    yield server
    server.stop()
