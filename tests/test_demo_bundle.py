"""The default bundle shipped in the package: present, small, labelled not for clinical use, loadable.

Until a demo model trained on synthetic phantoms meets its targets (issue 3), the shipped default
is an untrained TinyNet-C: the tests hold for either, and check that it is labelled as what it is."""

from __future__ import annotations

import json

from hipcad.runtime.backends import open_backend
from hipcad.runtime.bundle import DEFAULT_BUNDLE, load_bundle

from .conftest import pelvis_like, run_cli


def test_demo_bundle_is_shipped_small_and_labelled():
    bundle = load_bundle(None)
    assert bundle.path == DEFAULT_BUNDLE
    assert bundle.synthetic_demo or not bundle.trained, "the default model must never pass for a clinical one"
    assert ("SYNTHETIC DEMO" in bundle.label or "UNTRAINED" in bundle.label) and "not for clinical use" in bundle.label
    assert bundle.manifest["clinical_use"] is False
    size = sum(f.stat().st_size for f in DEFAULT_BUNDLE.iterdir() if f.is_file())
    assert size <= 20 * 2**20, f"demo bundle is {size / 2**20:.1f} MB"
    assert bundle.manifest["provenance"]["command"].startswith(("hipcad train", "hipcad export"))


def test_demo_bundle_passes_its_self_test():
    with open_backend("onnxruntime", load_bundle(None)) as backend:
        assert backend.selftest["agree"]


def test_predict_defaults_to_the_demo_model_and_says_so(tmp_path):
    from PIL import Image

    path = tmp_path / "x.png"
    Image.fromarray(pelvis_like()).save(path)
    proc = run_cli("predict", str(path), "--json", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["model"]["name"] == "demo"
    assert "not for clinical use" in proc.stderr
