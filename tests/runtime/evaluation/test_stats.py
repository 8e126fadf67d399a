"""hipcad.runtime.evaluation.stats against scikit-learn, the paper's intervals and DeLong's definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from hipcad.runtime.evaluation import roc_plot
from hipcad.runtime.evaluation import stats as M

sk = pytest.importorskip("sklearn.metrics")


def _data(seed: int, n: int = 600, decimals: int = 2):
    """Labels and scores rounded to ``decimals`` (many tied scores, across both classes)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rng.uniform(0.2, 0.8)).astype(int)
    s = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1)
    return y, np.round(s, decimals)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_metrics_agree_with_sklearn(seed, threshold):
    y, s = _data(seed, decimals=1 + seed % 3)
    r = M.binary_metrics(y, s, threshold=threshold, n_bootstrap=200, seed=seed)
    pred = (s >= threshold).astype(int)
    assert r["accuracy"]["value"] == pytest.approx(sk.accuracy_score(y, pred), abs=1e-12)
    assert r["sensitivity"]["value"] == pytest.approx(sk.recall_score(y, pred), abs=1e-12)
    assert r["specificity"]["value"] == pytest.approx(sk.recall_score(y, pred, pos_label=0), abs=1e-12)
    assert r["f1"]["value"] == pytest.approx(sk.f1_score(y, pred), abs=1e-12)
    assert r["auc"]["value"] == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)
    tn, fp, fn, tp = sk.confusion_matrix(y, pred).ravel()
    assert r["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert r["n"] == len(y) and r["threshold"] == threshold
    for key in ("accuracy", "sensitivity", "specificity", "f1", "auc"):
        lo, hi = r[key]["ci95"]
        assert 0 <= lo <= r[key]["value"] <= hi <= 1, key


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("drop", [True, False])
def test_roc_curve_matches_sklearn_exactly(seed, drop):
    y, s = _data(seed, n=300 + 50 * seed, decimals=1 + seed % 3)
    fpr, tpr, thr = M.roc_curve(y, s, drop_intermediate=drop)
    fpr2, tpr2, thr2 = sk.roc_curve(y, s, drop_intermediate=drop)
    np.testing.assert_array_equal(fpr, fpr2)
    np.testing.assert_array_equal(tpr, tpr2)
    np.testing.assert_array_equal(thr, thr2)
    assert M.auc_score(y, s) == pytest.approx(sk.auc(fpr2, tpr2), abs=1e-12)


def test_roc_curve_all_tied_and_small():
    for y, s in (([0, 1, 0, 1], [0.5] * 4), ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), ([1, 0], [0.2, 0.9])):
        for got, want in zip(M.roc_curve(y, s), sk.roc_curve(y, s)):
            np.testing.assert_array_equal(got, want)
        assert M.auc_score(y, s) == pytest.approx(sk.roc_auc_score(y, s))


@pytest.mark.parametrize("p, n, lo, hi", [
    (0.961, 1000, 0.949, 0.973),  # the paper's accuracy
    (0.952, 1000, 0.939, 0.965),  # its sensitivity interval (reproduced with n = 1000)
    (0.969, 1000, 0.958, 0.980),  # its specificity interval (n = 1000)
])
def test_wald_interval_reproduces_the_paper(p, n, lo, hi):
    got = M.proportion_ci(round(p * n), n, "wald")
    assert [round(v, 3) for v in got] == [lo, hi]


def test_accuracy_interval_in_binary_metrics_is_wald():
    y = np.r_[np.ones(500), np.zeros(500)].astype(int)
    pred = y.copy()
    pred[:39] = 0  # 39 errors of 1000: accuracy 0.961
    r = M.binary_metrics(y, pred.astype(float), n_bootstrap=0)
    assert r["accuracy"]["value"] == pytest.approx(0.961)
    assert [round(v, 3) for v in r["accuracy"]["ci95"]] == [0.949, 0.973]
    assert r["ci_methods"]["accuracy"] == "wald"


def test_wilson_interval_known_values_and_clipping():
    # Wilson score interval: 5/10 -> (0.2366, 0.7634); 0/10 -> (0, 0.2775) (Newcombe 1998)
    lo, hi = M.proportion_ci(5, 10, "wilson")
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = M.proportion_ci(0, 10, "wilson")
    assert lo == pytest.approx(0.0, abs=1e-12) and round(hi, 4) == 0.2775
    assert M.proportion_ci(0, 10, "wald") == (0.0, 0.0)  # Wald collapses at the boundary
    assert M.proportion_ci(10, 10, "wald") == (1.0, 1.0)
    lo, hi = M.proportion_ci(1, 3, "wald")  # 0.333 - 0.533 -> clipped to 0
    assert lo == 0.0 and hi == pytest.approx(1 / 3 + M.Z975 * math.sqrt(2 / 27))
    assert M.proportion_ci(0, 0) == (None, None)
    r = M.binary_metrics([0, 1, 1, 0], [0.2, 0.9, 0.4, 0.6], ci_method="wilson", n_bootstrap=0)
    assert r["ci_methods"]["sensitivity"] == "wilson"
    assert r["accuracy"]["ci95"] == pytest.approx(list(M.proportion_ci(2, 4, "wilson")))
    with pytest.raises(ValueError):
        M.proportion_ci(1, 2, "exact")


def _delong_by_definition(y, s):
    """DeLong's structural components from the O(m·n) definition (psi = 1, 1/2, 0)."""
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), np.var(v10, ddof=1) / pos.size + np.var(v01, ddof=1) / neg.size


def test_delong_worked_example():
    # positives 0.9, 0.4; negatives 0.5, 0.1: components (1, 0.5) and (0.5, 1) -> var 0.125/2 + 0.125/2
    auc, var = M.delong_auc_variance([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1])
    assert auc == pytest.approx(0.75) and var == pytest.approx(0.125)


@pytest.mark.parametrize("seed", range(5))
def test_fast_delong_equals_the_definition_with_ties(seed):
    y, s = _data(seed, n=400, decimals=1 + seed % 2)
    auc, var = M.delong_auc_variance(y, s)
    auc2, var2 = _delong_by_definition(y, s)
    assert auc == pytest.approx(auc2, abs=1e-12)
    assert var == pytest.approx(var2, rel=1e-10)


def test_delong_variance_matches_a_stratified_bootstrap():
    y, s = _data(11, n=500, decimals=3)
    auc, var = M.delong_auc_variance(y, s)
    rng = np.random.default_rng(0)
    pos, neg = s[y == 1], s[y == 0]
    boots = []
    for _ in range(1500):
        bp = rng.choice(pos, pos.size)
        bn = rng.choice(neg, neg.size)
        boots.append(M.auc_score(np.r_[np.ones(bp.size), np.zeros(bn.size)].astype(int), np.r_[bp, bn]))
    assert np.var(boots, ddof=1) == pytest.approx(var, rel=0.15)
    r = M.binary_metrics(y, s, n_bootstrap=0)
    half = M.Z975 * math.sqrt(var)
    assert r["auc"]["ci95"] == pytest.approx([auc - half, auc + half])


def test_f1_bootstrap_is_seeded_and_sensible():
    y, s = _data(3)
    a = M.binary_metrics(y, s, n_bootstrap=1000, seed=7)
    b = M.binary_metrics(y, s, n_bootstrap=1000, seed=7)
    c = M.binary_metrics(y, s, n_bootstrap=1000, seed=8)
    assert a["f1"] == b["f1"] and a["f1"]["ci95"] != c["f1"]["ci95"]
    lo, hi = a["f1"]["ci95"]
    assert lo < a["f1"]["value"] < hi and 0.02 < hi - lo < 0.2
    # percentile bootstrap of the multinomial counts == bootstrap of the cases, in distribution
    pred = s >= 0.5
    rng = np.random.default_rng(1)
    idx = rng.integers(0, y.size, (1000, y.size))
    f1s = [sk.f1_score(y[i], pred[i]) for i in idx[:300]]
    assert np.percentile(f1s, 2.5) == pytest.approx(lo, abs=0.02)
    assert np.percentile(f1s, 97.5) == pytest.approx(hi, abs=0.02)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.99, 1.0])
def test_operating_points_reach_their_targets(seed, target):
    y, s = _data(seed, n=400, decimals=2)
    cand = np.r_[np.inf, np.unique(s)]

    def sens(t):
        return np.mean(s[y == 1] >= t)

    def spec(t):
        return np.mean(s[y == 0] < t)

    op = M.threshold_for_sensitivity(y, s, target)
    t = op["threshold"]
    assert op["sensitivity"] == pytest.approx(sens(t)) and op["sensitivity"] >= target - 1e-12
    assert op["specificity"] == pytest.approx(spec(t))
    assert all(sens(c) < target for c in cand if c > t)  # the largest such threshold
    tn, fp, fn, tp = sk.confusion_matrix(y, (s >= t).astype(int)).ravel()
    assert op["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}

    op = M.threshold_for_specificity(y, s, target)
    t = op["threshold"]
    assert op["specificity"] == pytest.approx(spec(t)) and op["specificity"] >= target - 1e-12
    assert op["sensitivity"] == pytest.approx(sens(t))
    assert all(spec(c) < target for c in cand if c < t)  # the smallest such threshold


def test_operating_point_exact_fractions_and_errors():
    y = [1] * 10 + [0] * 10
    s = list(np.linspace(0.5, 0.95, 10)) + list(np.linspace(0.0, 0.45, 10))
    op = M.threshold_for_sensitivity(y, s, 0.7)  # 7 of 10 (0.7 * 10 is 7.000000000000001 in floats)
    assert op["sensitivity"] == 0.7 and op["threshold"] == pytest.approx(s[3])
    op = M.threshold_for_specificity(y, s, 0.3)
    assert op["specificity"] == 0.3 and op["threshold"] == pytest.approx(s[13])
    with pytest.raises(ValueError):
        M.threshold_for_sensitivity([0, 0], [0.1, 0.2], 0.9)
    with pytest.raises(ValueError):
        M.threshold_for_specificity([1, 1], [0.1, 0.2], 0.9)
    with pytest.raises(ValueError):
        M.threshold_for_sensitivity(y, s, 1.5)


@pytest.mark.parametrize("labels, missing", [([0, 0, 0, 0], "positive"), ([1, 1, 1, 1], "negative")])
def test_single_class_does_not_crash(labels, missing):
    r = M.binary_metrics(labels, [0.1, 0.7, 0.4, 0.9])
    assert r["auc"]["value"] is None and missing in r["auc"]["note"]
    undefined = "sensitivity" if missing == "positive" else "specificity"
    assert r[undefined]["value"] is None and r[undefined]["ci95"] == [None, None]
    assert r["accuracy"]["value"] == pytest.approx(0.5)
    assert any(missing in note for note in r["notes"])
    fpr, tpr, _ = M.roc_curve(labels, [0.1, 0.7, 0.4, 0.9])
    assert np.isnan(tpr if missing == "positive" else fpr).all()
    r = M.binary_metrics([0, 0, 0], [0.1, 0.2, 0.3])  # no positives and no positive calls
    assert r["f1"]["value"] is None and "undefined" in r["f1"]["note"]


def test_invalid_inputs_raise_value_error():
    for y, s in (([0, 2], [0.1, 0.2]), ([0, 1], [0.1]), ([0, 1], [0.1, float("nan")]), ([], [])):
        with pytest.raises(ValueError):
            M.binary_metrics(y, s)
    with pytest.raises(ValueError):
        M.auc_score([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError):
        M.binary_metrics([0, 1], [0.1, 0.9], ci_method="clopper")


def test_render_roc_png(tmp_path):
    y, s = _data(2, n=300)
    fpr, tpr, _ = M.roc_curve(y, s)
    r = M.binary_metrics(y, s, n_bootstrap=0)
    out = roc_plot.render_roc_png(fpr, tpr, r["auc"]["value"], tmp_path / "roc.png", title="Test ROC",
                           auc_ci=r["auc"]["ci95"])
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (640, 640)
    a = np.asarray(img.convert("RGB")).astype(int)
    blue = (np.abs(a[..., 0] - 31) < 40) & (np.abs(a[..., 1] - 97) < 40) & (np.abs(a[..., 2] - 171) < 40)
    assert blue.sum() > 1000  # the curve is drawn
    assert (a.sum(axis=2) < 200).sum() > 2000  # axes, ticks and text
    # an undefined AUC still renders
    roc_plot.render_roc_png([0, 1], [0, 1], None, tmp_path / "none.png")
    assert Image.open(tmp_path / "none.png").size == (640, 640)
