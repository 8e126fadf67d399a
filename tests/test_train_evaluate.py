"""hipcad train, evaluate and bench end to end on small synthetic data and a small network."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hipcad.export.train import dividing_line

from .conftest import run_cli


def test_dividing_line_keeps_the_papers_margin():
    # fracture box on the image's left half, close to the midline: the line moves right
    assert dividing_line(1000, 500, (400, 480), True, 50) == 530
    # box well inside its half: the midline stays
    assert dividing_line(1000, 500, (100, 200), True, 50) == 500
    # box on the image's right half, close to the midline: the line moves left
    assert dividing_line(1000, 500, (520, 600), False, 50) == 470
    # never outside the image
    assert dividing_line(1000, 500, (900, 990), True, 50) == 999


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "ds"
    proc = run_cli("synth", "--out", str(out), "--count", "40", "--seed", "3", "--size", "560x448", "-q")
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def trained_bundle(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "bundle"
    proc = run_cli("train", str(small_dataset), "--out", str(out), "--arch", "efficientnet_b0", "--input-size", "96",
                   "--epochs", "2", "--batch-size", "8", "--val", "0.25", "--test", "0.25", "--no-torch")
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2:" in proc.stderr and "validation" in proc.stderr
    return out


def test_train_writes_a_labelled_bundle_with_its_figures(trained_bundle):
    manifest = json.loads((trained_bundle / "manifest.json").read_text())
    training = manifest["training"]
    assert manifest["trained"] is True and manifest["synthetic_demo"] is True  # a hipcad synth folder
    assert training["epochs"] == 2 and 1 <= training["best_epoch"] <= 2 and len(training["history"]) == 2
    assert set(training["radiographs"]) == {"train", "validation", "test"}
    assert sum(training["radiographs"].values()) == 40
    assert "accuracy" in training["figures"]["validation"]
    assert manifest["provenance"]["command"].startswith("hipcad train")


def test_split_is_by_patient(small_dataset):
    from hipcad.runtime.dataset import load_dataset, split_by_patient

    parts = split_by_patient(load_dataset(small_dataset), (0.5, 0.25, 0.25), seed=0)
    patients = [{r.patient_id for r in part} for part in parts]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2]) and not (patients[1] & patients[2])


def test_evaluate_json_and_outputs(trained_bundle, small_dataset, tmp_path):
    proc = run_cli("evaluate", "--model", str(trained_bundle), str(small_dataset), "--json", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    for key in ("accuracy", "sensitivity", "specificity", "f1", "auc"):
        assert set(report[key]) == {"value", "ci95"}
    assert report["n"] == 80
    assert set(report["cam_localization"]) >= {"sensitivity", "specificity"}
    assert (tmp_path / "roc.png").stat().st_size > 1000
    assert (tmp_path / "predictions.csv").read_text().count("\n") == 81
    assert "SYNTHETIC DEMO" in proc.stderr


def test_operating_points_are_written_and_used(trained_bundle, small_dataset, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(trained_bundle, bundle)
    proc = run_cli("evaluate", "--model", str(bundle), str(small_dataset), "--json", "--operating-points",
                   "--target-sensitivity", "0.9", "--select", "high_sensitivity")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    point = manifest["operating_points"]["high_sensitivity"]
    assert manifest["operating_point"] == "high_sensitivity" and point["achieved"]["sensitivity"] >= 0.9
    assert "high_specificity" in manifest["operating_points"]
    proc = run_cli("predict", str(next(small_dataset.glob("*.jpg"))), "--model", str(bundle), "--json")
    result = json.loads(proc.stdout)
    assert result["model"]["operating_point"] == "high_sensitivity"
    assert result["model"]["threshold"] == pytest.approx(point["threshold"])
    assert "operating point: high_sensitivity" in proc.stderr


@pytest.mark.heavy
def test_bench_json_with_baseline(tmp_path):
    bundle = tmp_path / "b0"
    assert run_cli("export", "--random-init", "--arch", "efficientnet_b0", "--input-size", "128", "--out", str(bundle)).returncode == 0
    proc = run_cli("bench", "--model", str(bundle), "--images", "5", "--baseline", "--baseline-images", "2",
                   "--workdir", str(tmp_path / "work"), "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert set(r["e2e_ms"]) == {"p50", "p95"} and r["e2e_ms"]["p50"] > 0
    assert {"decode", "preprocess", "inference", "postprocess", "overlay"} <= set(r["stages_ms"])
    for key in ("throughput_per_s", "backend", "model", "paper_ms", "compute_efficiency", "speedup_vs_baseline"):
        assert key in r
    assert r["paper_ms"] == 1170.0
    assert set(r["baseline"]["e2e_ms"]) == {"p50", "p95"}
    # both ran the same five kinds of input in one run; hipcad must not be the slower one
    assert r["speedup_vs_baseline"] > 1.0
    assert len(r["inputs"]) + len(r["skipped_inputs"]) == 5


def test_train_with_the_fastai_head_and_its_checkpoint_round_trip(small_dataset, tmp_path):
    """The paper trained with fastai: the concat-pool head trains, exports with its forward-op
    Grad-CAM, and the saved checkpoint is one that `hipcad export` reads back."""
    out, ckpt = tmp_path / "fastai", tmp_path / "fastai.pth"
    proc = run_cli("train", str(small_dataset), "--out", str(out), "--arch", "efficientnet_b0", "--input-size", "64",
                   "--head", "fastai", "--epochs", "1", "--batch-size", "8", "--val", "0.25", "--test", "0.25",
                   "--no-torch", "--save-checkpoint", str(ckpt))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["cam"]["head"] == "fastai-concat-pool" and manifest["training"]["head"] == "fastai"
    again = tmp_path / "again"
    proc = run_cli("export", str(ckpt), "--arch", "efficientnet_b0", "--input-size", "64", "--out", str(again), "--no-torch")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((again / "manifest.json").read_text())["provenance"]["format"] == "fastai"
    from hipcad.runtime.backends import open_backend
    from hipcad.runtime.bundle import Bundle
    from hipcad.runtime.selftest import reference_inputs

    images = reference_inputs(3, (64, 64), seed=5)
    with open_backend("onnxruntime", Bundle(out)) as a, open_backend("onnxruntime", Bundle(again)) as b:
        (la, ca), (lb, cb) = a.infer(images), b.infer(images)
    assert np.abs(la - lb).max() <= 1e-5 and np.abs(ca - cb).max() <= 1e-5 * max(np.abs(ca).max(), 1e-12)
