"""hipcad train, evaluate and bench end to end on small synthetic data and a small network."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hipcad.export.train.halves import dividing_line
from tests.helpers import run_cli


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


trained_log: dict = {}


@pytest.fixture(scope="module")
def trained_bundle(small_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "bundle"
    proc = run_cli("train", str(small_dataset), "--out", str(out), "--arch", "efficientnet_b0", "--input-size", "96",
                   "--epochs", "2", "--batch-size", "8", "--val", "0.25", "--test", "0.25", "--no-torch")
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2:" in proc.stderr and "validation" in proc.stderr
    trained_log.update(stdout=proc.stdout, stderr=proc.stderr)
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
    assert training["box_supervision"] == 1.0  # on by default: the synth folder has fracture boxes
    # the validation halves' log-odds are the reference for drift monitoring
    assert manifest["reference"]["halves"] == training["halves"]["validation"] == len(manifest["reference"]["logits"])
    # the calibration is fitted on the validation split and the figures are on its scale -- unless, as two
    # epochs on 20 radiographs usually leave it, the model's scores are uninformative: then it says so
    if "calibration" in manifest:
        calibration = manifest["calibration"]
        assert calibration["method"] == "temperature" and calibration["fitted_on"]["split"] == "validation"
        assert calibration["after"]["log_loss"] <= calibration["before"]["log_loss"]
    else:
        assert "no calibration:" in trained_log["stderr"] and "uncalibrated" in trained_log["stdout"]
    assert training["figures"]["validation"]["threshold"] == manifest["operating_points"]["default"]["threshold"]


def test_cut_record_maps_the_fracture_box_into_its_half(small_dataset):
    from hipcad.export.train.halves import cut_record
    from hipcad.runtime.evaluation.dataset import load_dataset

    records = [r for r in load_dataset(small_dataset) if len(r.fractured_sides) == 1]
    assert records
    for record in records:
        halves = cut_record(record, (96, 96))
        assert [label for _, label, _, _ in halves] == [int(record.sides[s].fracture) for s in ("right", "left")]
        for image, label, source, box in halves:
            assert image.shape == (96, 96) and (box is not None) == bool(label)
            if box is not None:  # inside the half (the cut keeps 50 px from it), with its extent
                x0, y0, x1, y1 = box
                assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96 and (x1 - x0) * (y1 - y0) >= 4


def test_box_masks_and_the_halves_cache(small_dataset, tmp_path):
    from hipcad.export.train.augment import box_masks
    from hipcad.export.train.halves import cached_halves
    from hipcad.runtime.evaluation.dataset import load_dataset

    masks = box_masks(np.array([[2, 3, 6, 5], [np.nan] * 4], dtype=np.float32), (8, 10))
    assert masks.shape == (2, 1, 8, 10) and masks[1].sum() == 0
    assert masks[0, 0].nonzero().tolist()[0] == [3, 2] and masks[0].sum() == 2 * 4  # rows 3-4, columns 2-5
    records = load_dataset(small_dataset).images[:6]
    first = cached_halves(records, (64, 64), "t", 2, str(tmp_path))  # decoded in 2 processes
    assert len(list(tmp_path.glob("halves-t-*.npz"))) == 1
    again = cached_halves(records, (64, 64), "t", 1, str(tmp_path))  # from the cache
    assert np.array_equal(first.images, again.images) and first.sources == again.sources
    assert np.array_equal(np.isnan(first.boxes), np.isnan(again.boxes))


def test_split_is_by_patient(small_dataset):
    from hipcad.runtime.evaluation.dataset import load_dataset, split_by_patient

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
    report = json.loads(proc.stdout)  # made at the selected point: its misclassified halves are its confusion's
    c = report["confusion"]
    assert report["threshold"] == pytest.approx(point["threshold"])
    assert report["n_misclassified"] == c["fp"] + c["fn"]
    proc = run_cli("predict", str(next(small_dataset.glob("*.jpg"))), "--model", str(bundle), "--json")
    result = json.loads(proc.stdout)
    assert result["model"]["operating_point"] == "high_sensitivity"
    assert result["model"]["threshold"] == pytest.approx(point["threshold"])
    assert "operating point: high_sensitivity" in proc.stderr


def test_quantize_writes_an_int8_bundle_compared_with_fp32(trained_bundle, small_dataset, tmp_path):
    from hipcad.runtime.backends import open_backend
    from hipcad.runtime.errors import BackendUnavailableError
    from hipcad.runtime.model.bundle import load_bundle

    out = tmp_path / "int8"
    proc = run_cli("quantize", str(trained_bundle), "--out", str(out), "--calibration", str(small_dataset),
                   "--images", "8", "--eval", str(small_dataset))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and "torch" not in manifest
    assert manifest["synthetic_demo"] is True and manifest["trained"] is True  # labels carried over
    q = manifest["quantization"]
    assert q["calibration"]["radiographs"] == 8 and q["source"]["onnx_sha256"] == json.loads(
        (trained_bundle / "manifest.json").read_text())["onnx"]["sha256"]
    agreement = q["agreement"]
    assert agreement["halves"] == 80 and set(agreement["fp32"]) == set(agreement["int8"]) >= {"auc", "accuracy"}
    assert 0.0 <= agreement["verdict_agreement"] <= 1.0 and 0.0 <= agreement["peak_agreement"] <= 1.0
    assert isinstance(agreement["passed"], bool)
    # INT8 runs: the probabilities stay near FP32's; ONNX Runtime self-tests it; the torch backend refuses it
    assert agreement["probability_abs_diff"]["max"] < 0.1
    bundle = load_bundle(out)
    with open_backend("onnxruntime", bundle) as backend:
        assert backend.precision == "int8" and backend.selftest["agree"]
    with pytest.raises(BackendUnavailableError, match="int8"):
        open_backend("torch", bundle)
    proc = run_cli("predict", str(next(small_dataset.glob("*.jpg"))), "--model", str(out), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["model"]["precision"] == "int8"
    # an INT8 bundle is not quantised twice
    again = run_cli("quantize", str(out), "--out", str(tmp_path / "twice"), "--calibration", str(small_dataset))
    assert again.returncode == 1 and "already int8" in again.stderr


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
    isolation = r["decode_isolation"]  # what decoding in a separate process costs, per input
    assert set(isolation["per_input"]) == set(r["inputs"]) and isolation["decode_after_a_kill_ms"] > 0


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
    from hipcad.runtime.model.bundle import Bundle
    from hipcad.runtime.model.selftest import reference_inputs

    images = reference_inputs(3, (64, 64), seed=5)
    with open_backend("onnxruntime", Bundle(out)) as a, open_backend("onnxruntime", Bundle(again)) as b:
        (la, ca), (lb, cb) = a.infer(images), b.infer(images)
    assert np.abs(la - lb).max() <= 1e-5 and np.abs(ca - cb).max() <= 1e-5 * max(np.abs(ca).max(), 1e-12)
