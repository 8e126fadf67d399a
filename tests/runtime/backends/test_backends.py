"""Backend conformance: every backend available here, against the same bundle and references."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hipcad.runtime.backends import BACKENDS, backend_class, open_backend
from hipcad.runtime.errors import BackendUnavailableError, BundleError, SelfTestError
from hipcad.runtime.model.bundle import Bundle
from hipcad.runtime.model.selftest import reference_inputs
from tests.helpers import Serve, run_cli


@pytest.mark.heavy
@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_backend_conformance(name, b4_bundle, tmp_path):
    ok, why = backend_class(name).availability()
    if not ok:
        pytest.skip(f"{name} not available here: {why}")
    bundle = Bundle(b4_bundle)
    with contextlib.ExitStack() as stack:
        options = {}
        if name == "triton":  # a real tritonserver serving the same bundle (`hipcad serve` of the server venv)
            options["url"] = stack.enter_context(Serve(b4_bundle, tmp_path / "serve", "--ort-threads", "1")).grpc_url
        backend = stack.enter_context(open_backend(name, bundle, **options))
        assert backend.selftest["agree"] is True
        images = reference_inputs(3, bundle.input_hw, seed=11)
        logits, cam = backend.infer(images)
        assert logits.shape == (3, 2) and logits.dtype == np.float32
        assert cam.shape == (3, 12, 12) and cam.dtype == np.float32 and (cam >= 0).all()
        with pytest.raises(Exception, match="uint8"):
            backend.infer(images.astype(np.float32))


def test_unavailable_backend_is_refused_by_name():
    cls = backend_class("tensorrt")
    ok, why = cls.availability()
    if ok:
        pytest.skip("TensorRT is installed here")
    assert "TensorRT" in why
    with pytest.raises(BackendUnavailableError, match="'tensorrt' is not available"):
        open_backend("tensorrt", bundle=None)


@pytest.mark.heavy
def test_auto_picks_the_first_backend_that_loads_and_says_why(b4_bundle):
    backend = open_backend("auto", Bundle(b4_bundle))
    try:
        if not backend_class("tensorrt").availability()[0]:
            assert backend.name == "onnxruntime"
            assert "tensorrt" in backend.fallback_reason
    finally:
        backend.deactivate()


@pytest.mark.heavy
def test_selftest_refuses_a_backend_whose_outputs_deviate(b4_bundle, tmp_path):
    """A wrong preprocessing or corrupted engine shows up as outputs that differ from the
    references; here the references are made wrong, which the backend cannot tell apart."""
    copy = tmp_path / "bundle"
    shutil.copytree(b4_bundle, copy)
    with np.load(copy / "selftest.npz") as ref:
        data = dict(ref)
    data["logits"] = data["logits"] + 0.01
    np.savez(copy / "selftest.npz", **data)
    with pytest.raises(BundleError, match="selftest.npz does not match its manifest"):  # a changed file of a signed bundle
        open_backend("onnxruntime", Bundle(copy))
    from hipcad.runtime.tools.signing import sign_if_configured

    sign_if_configured(copy)  # signed as it is now: wrong references, which only the self-test can catch
    with pytest.raises(SelfTestError, match="refusing to use it"):
        open_backend("onnxruntime", Bundle(copy))


@pytest.mark.heavy
def test_parity_cli_onnxruntime_vs_torch(b4_bundle):
    proc = run_cli("parity", str(b4_bundle), "--backends", "onnxruntime,torch", "--count", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    pair = report["pairs"]["onnxruntime vs torch"]
    assert report["agree"] and pair["agree"]
    assert pair["logits_max_abs"] <= 1e-4 and pair["cam_max_rel"] <= 1e-3 and pair["verdict_agreement"] == 1.0
    assert report["inputs"] == 4


def test_parity_cli_reports_a_missing_backend(b4_bundle):
    if backend_class("tensorrt").availability()[0]:
        pytest.skip("TensorRT is installed here")
    proc = run_cli("parity", str(b4_bundle), "--backends", "onnxruntime,tensorrt")
    assert proc.returncode == 2 and "not installed" in proc.stderr and "Traceback" not in proc.stderr


def test_runtime_never_imports_torch_or_export():
    """The device has no torch: importing every runtime module must not pull it in."""
    code = (
        "import sys, pkgutil, importlib, hipcad.runtime as r, hipcad.runtime.backends as b\n"
        "for m in pkgutil.iter_modules(r.__path__): importlib.import_module('hipcad.runtime.' + m.name)\n"
        "for m in pkgutil.iter_modules(b.__path__): importlib.import_module('hipcad.runtime.backends.' + m.name)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'tensorrt', 'pycuda') or m.startswith('hipcad.export')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
