"""The default bundle shipped in the package: a TinyNet-C trained on synthetic phantoms; present,
small, labelled not for clinical use, loadable, and able to find fractures in phantoms it never saw."""

from __future__ import annotations

import json

from hipcad.runtime.backends import open_backend
from hipcad.runtime.model.bundle import DEFAULT_BUNDLE, load_bundle
from tests.helpers import phantom, run_cli


def test_demo_bundle_is_shipped_small_and_labelled():
    bundle = load_bundle(None)
    assert bundle.path == DEFAULT_BUNDLE
    assert bundle.trained and bundle.synthetic_demo, "the default model must never pass for a clinical one"
    assert "SYNTHETIC DEMO" in bundle.label and "not for clinical use" in bundle.label
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
    Image.fromarray(phantom(4402)[0]).save(path)
    proc = run_cli("predict", str(path), "--json", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["model"]["name"] == "demo"
    assert "not for clinical use" in proc.stderr


def test_demo_model_finds_fractures_in_phantoms_it_never_saw(tmp_path):
    """24 fresh phantoms (a seed far from the training set's): most halves right, and the heatmap
    peak on the fracture for most detected fractures. The full figures (500 phantoms) are in the
    README; this guards against shipping a broken or untrained default."""
    from hipcad.runtime.evaluation.dataset import Box, load_dataset
    from hipcad.runtime.inference.pipeline import Pipeline

    data = tmp_path / "fresh"
    assert run_cli("synth", "--out", str(data), "--count", "24", "--seed", "97531", "-q").returncode == 0
    dataset = load_dataset(data)
    bundle = load_bundle(None)
    with open_backend("onnxruntime", bundle) as backend:
        results = list(Pipeline(bundle, backend).run_many((rec.path, None) for rec in dataset))
    right = hits = detected = 0
    for rec, result in zip(dataset, results):
        assert result.ok, result.error
        for side in result.sides:
            label = rec.sides[side.side]
            right += side.fracture == label.fracture
            if label.fracture and side.fracture and label.box:
                detected += 1
                hits += Box(*side.heatmap_peak_box).intersection(label.box) > 0
    assert right / (2 * len(dataset)) >= 0.85
    assert detected >= 5 and hits / detected >= 0.8
