"""Calibration figures against scikit-learn and scipy; the fit; thresholds that keep every verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize, minimize_scalar
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss
from sklearn.metrics import log_loss as sk_log_loss

from hipcad.runtime.errors import BundleError
from hipcad.runtime.evaluation.calibration import (
    T_RANGE,
    brier_score,
    calibrated_manifest,
    calibration_metrics,
    convert_threshold,
    expected_calibration_error,
    fit_calibration,
    log_loss,
    platt_targets,
    reliability_bins,
)
from hipcad.runtime.inference.verdict import Calibration, fracture_probability, log_odds_probability, score_words
from hipcad.runtime.model.bundle import Bundle


def _data(n=3000, scale=2.5, bias=-0.4, seed=0):
    """Log-odds of an overconfident, leaning model: the truth is sigmoid(d / scale + bias)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0, 4, n)
    y = (rng.random(n) < log_odds_probability(d, scale, bias)).astype(int)
    return d, y


def test_figures_match_scikit_learn():
    d, y = _data()
    p = log_odds_probability(d)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p))
    observed, predicted = calibration_curve(y, p, n_bins=10, strategy="uniform")
    bins = [b for b in reliability_bins(y, p) if b["n"]]
    assert [b["observed"] for b in bins] == pytest.approx(observed)
    assert [b["mean_predicted"] for b in bins] == pytest.approx(predicted)
    counts = np.array([b["n"] for b in bins])
    ece = np.sum(counts / len(y) * np.abs(observed - predicted))
    assert expected_calibration_error(y, p) == pytest.approx(ece)
    metrics = calibration_metrics(y, p, n_bootstrap=200)
    lo, hi = metrics["ece"]["ci95"]
    assert lo <= metrics["ece"]["value"] <= hi and metrics["n"] == len(y)
    assert calibration_metrics(y, p, n_bootstrap=200) == metrics  # seeded


def test_a_calibrated_model_has_a_small_ece_and_an_overconfident_one_does_not():
    d, y = _data(n=20000)
    assert expected_calibration_error(y, log_odds_probability(d, 2.5, -0.4)) < 0.01
    assert expected_calibration_error(y, log_odds_probability(d)) > 0.05


@pytest.mark.parametrize("method", ["temperature", "platt"])
def test_fit_minimises_the_log_loss_as_scipy_does(method):
    d, y = _data()
    fit = fit_calibration(d, y, method)

    t = platt_targets(y)

    def nll(params):  # cross-entropy against Platt's targets, written out
        a, b = params if method == "platt" else (params, 0.0)
        p = np.clip(log_odds_probability(d * a, 1.0, b), 1e-15, 1 - 1e-15)
        return float(-np.mean(t * np.log(p) + (1 - t) * np.log1p(-p)))
    if method == "temperature":
        best = minimize_scalar(nll, bounds=(0.01, 10), method="bounded", options={"xatol": 1e-8}).x
        assert 1 / fit["temperature"] == pytest.approx(best, rel=1e-4) and fit["bias"] == 0.0
    else:
        best = minimize(nll, [1.0, 0.0], method="BFGS", options={"gtol": 1e-9}).x
        assert [1 / fit["temperature"], fit["bias"]] == pytest.approx(best, rel=1e-4, abs=1e-4)
    assert fit["temperature"] == pytest.approx(2.5, rel=0.1)
    assert fit["log_loss_after"] < fit["log_loss_before"]


def test_fit_refuses_what_cannot_be_calibrated():
    with pytest.raises(ValueError, match="both classes"):
        fit_calibration([1.0, 2.0], [1, 1])
    with pytest.raises(ValueError, match="end of its range"):  # scores that order the cases backwards
        fit_calibration([3.0, 2.0, -2.0, -3.0], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="unknown calibration method"):
        fit_calibration([1.0, 2.0], [0, 1], "isotonic")


def test_platt_targets_and_a_perfectly_separated_set():
    assert platt_targets([1, 1, 1, 0]).tolist() == pytest.approx([4 / 5, 4 / 5, 4 / 5, 1 / 3])
    d, y = [-3.0, -2.0, -1.5, 1.0, 2.0, 3.0], [0, 0, 0, 1, 1, 1]  # a good model on a small set
    for method in ("temperature", "platt"):
        fit = fit_calibration(d, y, method)  # bare labels would want an infinitely sharp sigmoid
        p = log_odds_probability(np.asarray(d), fit["temperature"], fit["bias"])
        assert T_RANGE[0] < fit["temperature"] < T_RANGE[1]
        assert np.all((p > 0.5) == np.asarray(y, bool))  # the same verdicts at 0.5 ...
        assert p.min() > 0.05 and p.max() < 0.95  # ... and no certainty six halves cannot give


@pytest.mark.parametrize("old,new", [((1.0, 0.0), (0.46, 0.0)), ((1.0, 0.0), (0.58, -1.3)), ((0.5, 0.2), (2.0, 1.0))])
def test_converted_thresholds_call_the_same_halves(old, new):
    d, _ = _data(n=5000, seed=4)
    logits = np.stack([np.zeros_like(d), d], axis=1)
    for t in (0.5, 0.1, 0.93, 0.0123, 0.999):
        t2 = convert_threshold(t, old, new)
        before = Calibration(*old).probability(logits) >= t
        after = Calibration(*new).probability(logits) >= t2
        assert np.array_equal(before, after), (t, t2)
    assert convert_threshold(float("inf"), old, new) == float("inf") and convert_threshold(0.0, old, new) == 0.0


def test_calibrated_manifest_converts_every_operating_point():
    manifest = {"operating_points": {"default": {"threshold": 0.5}, "high_sensitivity": {"threshold": 0.1},
                                     "high_specificity": {"threshold": float("inf")}}, "operating_point": "default"}
    fit = {"method": "platt", "temperature": 0.5, "bias": -1.0}
    out = calibrated_manifest(manifest, fit, {"dataset": "val"}, {"ece": 0.1}, {"ece": 0.01})
    points = out["operating_points"]
    assert points["default"]["threshold"] == pytest.approx(log_odds_probability(0.0, 0.5, -1.0))
    assert points["default"]["threshold_uncalibrated"] == pytest.approx(0.5)
    assert points["high_specificity"]["threshold"] == float("inf")
    assert out["calibration"]["temperature"] == 0.5 and out["calibration"]["replaced"] is None
    again = calibrated_manifest(out, {"method": "temperature", "temperature": 2.0, "bias": 0.0}, {}, {}, {})
    # converted from the first calibration's scale, not from the raw one
    assert again["operating_points"]["high_sensitivity"]["threshold"] == pytest.approx(
        convert_threshold(0.1, (1.0, 0.0), (2.0, 0.0)))
    assert again["operating_points"]["high_sensitivity"]["threshold_uncalibrated"] == pytest.approx(0.1)
    assert again["calibration"]["replaced"]["method"] == "platt"


def test_the_verdict_applies_the_bundles_calibration(tmp_path):
    logits = np.array([[0.0, 2.0], [1.0, -3.0]], dtype=np.float32)
    assert Calibration().probability(logits) == pytest.approx(fracture_probability(logits))
    assert Calibration(2.0, 0.5, True).probability(logits) == pytest.approx(1 / (1 + np.exp(-(np.array([2.0, -4.0]) / 2 + 0.5))))
    with pytest.raises(ValueError):
        Calibration(0.0)
    assert score_words(0.453, True) == "probability 45 %" and score_words(0.453, False) == "score 0.45"
    manifest = json.loads((Bundle.__init__.__globals__["DEFAULT_BUNDLE"] / "manifest.json").read_text())
    (tmp_path / "model.onnx").write_bytes(b"x")
    for entry, expect in (({"temperature": 0.5, "bias": -1.0}, Calibration(0.5, -1.0, True)), (None, Calibration())):
        m = {k: v for k, v in manifest.items() if k != "calibration"}
        if entry:
            m["calibration"] = entry
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        bundle = Bundle(tmp_path)
        assert bundle.calibration == expect and bundle.describe()["calibrated"] == expect.calibrated
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "calibration": {"temperature": -1}}))
    with pytest.raises(BundleError, match="calibration"):
        Bundle(tmp_path).calibration
