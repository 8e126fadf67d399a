"""Diagnostic-accuracy metrics for the hip-fracture CAD, with the confidence intervals the paper reports.

numpy only (the device has neither scikit-learn nor scipy); the ROC figure is drawn by :mod:`.roc_plot`.

Conventions
-----------
* Labels are 1 = fracture (positive), 0 = no fracture. Scores are fracture probabilities (any
  real numbers do: only their order matters for the ROC and the AUC).
* A case is called positive when ``score >= threshold`` -- the rule of
  :mod:`hipcad.runtime.inference.verdict` and of scikit-learn's ``roc_curve`` thresholds.
* Every metric is reported as ``{"value": x, "ci95": [lo, hi]}``. An undefined metric (for
  instance the sensitivity of a set without fractures) has ``value`` ``None``, ``ci95``
  ``[None, None]`` and a ``note`` saying why; nothing raises for such a degenerate set.

Confidence intervals
--------------------
* Accuracy, sensitivity, specificity: the **Wald** interval ``p ± z·sqrt(p(1-p)/n)``,
  ``z = 1.959964`` (the 97.5 % normal quantile), clipped to [0, 1]. This is what the paper
  reports (0.961 with n = 1000 -> 0.949..0.973), so it is the default and figures compare with
  the paper's. The Wald interval is poor near 0 or 1 and for small n (it collapses to a point
  at p = 0 or 1); ``ci_method="wilson"`` gives the Wilson score interval instead, which is the
  better choice for a small reader study or a validation set without the paper's n.
* AUC: **DeLong** (DeLong, DeLong & Clarke-Pearson 1988), computed with the fast midrank
  algorithm of Sun & Xu (2014): ``AUC ± z·sqrt(var)``, clipped to [0, 1] (as pROC reports it).
  Tied scores count one half, as in the Mann-Whitney statistic.
* F1: **percentile bootstrap** (``n_bootstrap`` resamples of the cases with replacement,
  seeded, so the same inputs give the same interval). F1 has no simple closed-form variance.
  Resampling n cases with replacement only changes how many TP/FP/TN/FN there are, so each
  resample is drawn directly as multinomial counts of the four cells: the same distribution as
  resampling indices, in O(n_bootstrap) time. Resamples in which F1 is undefined are skipped.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "Z975",
    "CI_METHODS",
    "binary_metrics",
    "confusion_counts",
    "proportion_ci",
    "rates_from_confusion",
    "roc_curve",
    "auc_score",
    "delong_auc_variance",
    "bootstrap_f1_ci",
    "threshold_for_sensitivity",
    "threshold_for_specificity",
]

Z975 = 1.959963984540054  # the 97.5 % quantile of the standard normal distribution
CI_METHODS = ("wald", "wilson")
_TOL = 1e-12  # for "at least the target" comparisons of rates computed in floating point


# -- inputs --------------------------------------------------------------------------------------

def _as_labels(y_true) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        y = y.reshape(-1)
    if y.dtype == bool:
        return y.astype(np.int8)
    if y.size and not np.issubdtype(y.dtype, np.number):
        raise ValueError("y_true must hold 0/1 (or boolean) labels")
    if y.size and not np.all(np.isin(y, (0, 1))):
        bad = np.unique(y[~np.isin(y, (0, 1))])[:5]
        raise ValueError(f"y_true must hold only 0 (no fracture) and 1 (fracture); found {bad.tolist()}")
    return y.astype(np.int8)


def _as_scores(y_score, n: int) -> np.ndarray:
    s = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if s.size != n:
        raise ValueError(f"y_true has {n} entries but y_score has {s.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError("y_score contains NaN or infinite values")
    return s


def _inputs(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(y_true)
    s = _as_scores(y_score, y.size)
    if y.size == 0:
        raise ValueError("no cases: y_true is empty")
    return y, s


def _metric(value, lo=None, hi=None, note: str | None = None) -> dict:
    out = {"value": None if value is None else float(value),
           "ci95": [None if lo is None else float(lo), None if hi is None else float(hi)]}
    if note:
        out["note"] = note
    return out


# -- proportions ---------------------------------------------------------------------------------

def proportion_ci(successes: int, n: int, method: str = "wald", z: float = Z975) -> tuple[float, float] | tuple[None, None]:
    """The two-sided 95 % interval (for the default ``z``) of a proportion ``successes / n``.

    ``"wald"``: ``p ± z·sqrt(p(1-p)/n)`` clipped to [0, 1] (the paper's interval).
    ``"wilson"``: the Wilson score interval (always inside [0, 1], sensible at p = 0 or 1).
    ``(None, None)`` when ``n == 0``.
    """
    if method not in CI_METHODS:
        raise ValueError(f"unknown CI method {method!r}; use one of {', '.join(CI_METHODS)}")
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return None, None
    p = successes / n
    if method == "wald":
        half = z * math.sqrt(p * (1.0 - p) / n)
        return max(0.0, p - half), min(1.0, p + half)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def confusion_counts(y_true, y_pred) -> dict[str, int]:
    """``{"tp", "fp", "tn", "fn"}`` of 0/1 labels against 0/1 (or boolean) calls."""
    y = _as_labels(y_true)
    p = _as_labels(y_pred)
    if p.size != y.size:
        raise ValueError(f"y_true has {y.size} entries but y_pred has {p.size}")
    yb, pb = y.astype(bool), p.astype(bool)
    return {"tp": int(np.sum(yb & pb)), "fp": int(np.sum(~yb & pb)),
            "tn": int(np.sum(~yb & ~pb)), "fn": int(np.sum(yb & ~pb))}


def rates_from_confusion(tp: int, fp: int, tn: int, fn: int, ci_method: str = "wald") -> dict:
    """Accuracy, sensitivity and specificity with their intervals (see :func:`proportion_ci`)."""
    n, pos, neg = tp + fp + tn + fn, tp + fn, tn + fp
    out = {}
    for name, k, m, why in (("accuracy", tp + tn, n, "no cases"),
                            ("sensitivity", tp, pos, "no positive (fracture) cases"),
                            ("specificity", tn, neg, "no negative (no-fracture) cases")):
        if m == 0:
            out[name] = _metric(None, note=f"{name} undefined: {why}")
        else:
            lo, hi = proportion_ci(k, m, ci_method)
            out[name] = _metric(k / m, lo, hi)
    return out


def _f1(tp, fp, fn):
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    den = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan)


def bootstrap_f1_ci(confusion: dict, n_bootstrap: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile-bootstrap interval of F1 from the confusion counts (see the module docstring).

    Deterministic for a given ``seed``. ``(None, None)`` when no resample has a defined F1.
    """
    cells = np.array([confusion["tp"], confusion["fp"], confusion["tn"], confusion["fn"]], dtype=np.int64)
    n = int(cells.sum())
    if n == 0 or n_bootstrap <= 0:
        return None, None
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, cells / n, size=int(n_bootstrap))
    f1 = _f1(draws[:, 0], draws[:, 1], draws[:, 3])
    f1 = f1[np.isfinite(f1)]
    if f1.size == 0:
        return None, None
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(f1, [100 * alpha, 100 * (1 - alpha)])
    return float(lo), float(hi)


# -- ROC and AUC ---------------------------------------------------------------------------------

def _curve_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fps, tps, thresholds) at every distinct score, highest first (scikit-learn's
    ``confusion_matrix_at_thresholds``)."""
    order = np.argsort(s, kind="stable")[::-1]
    s_sorted, y_sorted = s[order], y[order].astype(np.float64)
    distinct = np.nonzero(np.diff(s_sorted))[0]
    idx = np.concatenate([distinct, [y.size - 1]])
    tps = np.cumsum(y_sorted)[idx]
    fps = 1.0 + idx.astype(np.float64) - tps
    return fps, tps, s_sorted[idx]


def roc_curve(y_true, y_score, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` exactly as ``sklearn.metrics.roc_curve`` (scikit-learn >= 1.3).

    ``thresholds`` are the distinct scores, decreasing, preceded by ``+inf`` (the point (0, 0));
    at threshold ``t`` cases with ``score >= t`` are called positive. Tied scores form one point.
    With ``drop_intermediate=True`` (scikit-learn's default) points collinear with their
    neighbours on a horizontal or vertical segment are dropped (the same second-difference rule);
    the curve and its area are unchanged. Without positives (negatives) ``tpr`` (``fpr``) is all
    NaN, as scikit-learn returns it (without the warning).
    """
    y, s = _inputs(y_true, y_score)
    fps, tps, thr = _curve_points(y, s)
    if drop_intermediate and fps.size > 2:
        keep = np.concatenate([[True], np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), [True]])
        idx = np.nonzero(keep)[0]
        fps, tps, thr = fps[idx], tps[idx], thr[idx]
    fps = np.concatenate([[0.0], fps])
    tps = np.concatenate([[0.0], tps])
    thr = np.concatenate([[np.inf], thr])
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thr


def _midrank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given the mean of the ranks they span (the midrank)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    n = xs.size
    starts = np.concatenate([[0], np.nonzero(np.diff(xs))[0] + 1])
    ends = np.concatenate([starts[1:], [n]])
    mid = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks_sorted = np.repeat(mid, ends - starts)
    out = np.empty(n, dtype=np.float64)
    out[order] = ranks_sorted
    return out


def delong_components(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DeLong's structural components by the fast midrank algorithm (Sun & Xu 2014): per positive
    the share of negatives scored below it, per negative the share of positives scored above it
    (ties count 1/2); and the midranks of all the scores, positives first."""
    m, n = pos.size, neg.size
    tz = _midrank(np.concatenate([pos, neg]))
    per_pos = (tz[:m] - _midrank(pos)) / n
    per_neg = 1.0 - (tz[m:] - _midrank(neg)) / m
    return per_pos, per_neg, tz


def _delong(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """(AUC, DeLong variance) from :func:`delong_components`. Needs both classes."""
    pos, neg = s[y == 1], s[y == 0]
    m, n = pos.size, neg.size
    v01, v10, tz = delong_components(pos, neg)
    auc = (tz[:m].sum() - m * (m + 1) / 2.0) / (m * n)
    s01 = float(np.var(v01, ddof=1)) if m > 1 else 0.0
    s10 = float(np.var(v10, ddof=1)) if n > 1 else 0.0
    return float(auc), s01 / m + s10 / n


def auc_score(y_true, y_score) -> float:
    """The area under the ROC curve (= ``sklearn.metrics.roc_auc_score`` for binary labels):
    the probability that a random fracture scores above a random non-fracture, ties counting one
    half. Raises ``ValueError`` when only one class is present (as scikit-learn does)."""
    y, s = _inputs(y_true, y_score)
    if y.min() == y.max():
        raise ValueError("the AUC is undefined with only one class in y_true")
    return _delong(y, s)[0]


def delong_auc_variance(y_true, y_score) -> tuple[float, float]:
    """``(auc, variance)`` with DeLong's variance estimate (fast midrank algorithm)."""
    y, s = _inputs(y_true, y_score)
    if y.min() == y.max():
        raise ValueError("the AUC is undefined with only one class in y_true")
    return _delong(y, s)


# -- all together --------------------------------------------------------------------------------

def binary_metrics(y_true, y_score, threshold: float = 0.5, n_bootstrap: int = 2000, seed: int = 0,
                   ci_method: str = "wald") -> dict:
    """Accuracy, sensitivity, specificity, F1 and AUC of scores against 0/1 labels.

    Returns ``{"accuracy", "sensitivity", "specificity", "f1", "auc"}``, each
    ``{"value": x, "ci95": [lo, hi]}`` (plus ``"note"`` when undefined), and ``"n"``,
    ``"positives"``, ``"negatives"``, ``"confusion"`` (``{"tp", "fp", "tn", "fn"}``),
    ``"threshold"``, ``"ci_methods"`` and ``"notes"`` (every undefined metric, once).

    ``score >= threshold`` is a positive call. ``ci_method`` chooses the interval of the three
    proportions (``"wald"``, the paper's, or ``"wilson"``); the AUC's is DeLong's, F1's a
    seeded percentile bootstrap with ``n_bootstrap`` resamples (0 turns it off).

    Invalid input (labels other than 0/1, NaN scores, lengths that differ, no cases) raises
    ``ValueError``; a set without positives or without negatives does not.
    """
    if ci_method not in CI_METHODS:
        raise ValueError(f"unknown CI method {ci_method!r}; use one of {', '.join(CI_METHODS)}")
    y, s = _inputs(y_true, y_score)
    conf = confusion_counts(y, s >= threshold)
    out: dict = rates_from_confusion(**conf, ci_method=ci_method)
    pos, neg = int(y.sum()), int(y.size - y.sum())

    f1 = _f1(conf["tp"], conf["fp"], conf["fn"])
    if np.isfinite(f1):
        lo, hi = bootstrap_f1_ci(conf, n_bootstrap, seed)
        note = "F1 is 0 by definition: there are no positive cases" if pos == 0 else None
        out["f1"] = _metric(float(f1), lo, hi, note)
    else:
        out["f1"] = _metric(None, note="f1 undefined: no positive cases and no positive calls")

    if pos == 0 or neg == 0:
        out["auc"] = _metric(None, note=f"auc undefined: no {'positive (fracture)' if pos == 0 else 'negative (no-fracture)'} cases")
    else:
        auc, var = _delong(y, s)
        half = Z975 * math.sqrt(max(var, 0.0))
        out["auc"] = _metric(auc, max(0.0, auc - half), min(1.0, auc + half))

    out = {k: out[k] for k in ("accuracy", "sensitivity", "specificity", "f1", "auc")}
    out.update(
        n=int(y.size), positives=pos, negatives=neg, confusion=conf, threshold=float(threshold),
        ci_methods={"accuracy": ci_method, "sensitivity": ci_method, "specificity": ci_method,
                    "f1": f"percentile bootstrap ({int(n_bootstrap)} resamples, seed {seed})",
                    "auc": "DeLong"},
        notes=[v["note"] for v in out.values() if isinstance(v, dict) and v.get("note")],
    )
    return out


# -- operating points ----------------------------------------------------------------------------

def _check_target(target: float) -> float:
    target = float(target)
    if not (0.0 < target <= 1.0):
        raise ValueError(f"the target must be in (0, 1], got {target}")
    return target


def _operating_point(fps, tps, thr, P, N, i) -> dict:
    tp, fp = int(tps[i]), int(fps[i])
    return {"threshold": float(thr[i]),
            "sensitivity": tp / P if P else None,
            "specificity": (N - fp) / N if N else None,
            "confusion": {"tp": tp, "fp": fp, "tn": N - fp, "fn": P - tp}}


def _full_curve(y_true, y_score):
    y, s = _inputs(y_true, y_score)
    fps, tps, thr = _curve_points(y, s)
    fps = np.concatenate([[0.0], fps])
    tps = np.concatenate([[0.0], tps])
    thr = np.concatenate([[np.inf], thr])
    return fps, tps, thr, int(y.sum()), int(y.size - y.sum())


def threshold_for_sensitivity(y_true, y_score, target: float) -> dict:
    """The largest threshold whose sensitivity is at least ``target`` (rule ``score >= threshold``).

    Candidate thresholds are the observed scores, so the answer is the score of the
    ``ceil(target·P)``-th highest-scored fracture. Returns ``{"threshold", "sensitivity",
    "specificity", "confusion"}`` (achieved on these cases). ``ValueError`` without positives.
    """
    target = _check_target(target)
    fps, tps, thr, P, N = _full_curve(y_true, y_score)
    if P == 0:
        raise ValueError("no positive (fracture) cases: the sensitivity is undefined")
    i = int(np.argmax(tps / P >= target - _TOL))  # tps is non-decreasing; tps[-1]/P = 1 >= target
    return _operating_point(fps, tps, thr, P, N, i)


def threshold_for_specificity(y_true, y_score, target: float) -> dict:
    """The smallest threshold whose specificity is at least ``target`` (rule ``score >= threshold``).

    Candidate thresholds are the observed scores and ``+inf`` (everything negative), so the
    answer is the lowest score above the ``ceil(target·N)``-th lowest-scored non-fracture.
    Returns ``{"threshold", "sensitivity", "specificity", "confusion"}``. ``ValueError`` without
    negatives.
    """
    target = _check_target(target)
    fps, tps, thr, P, N = _full_curve(y_true, y_score)
    if N == 0:
        raise ValueError("no negative (no-fracture) cases: the specificity is undefined")
    ok = (N - fps) / N >= target - _TOL  # non-increasing along the (decreasing) thresholds; ok[0]
    i = int(np.nonzero(ok)[0][-1])
    return _operating_point(fps, tps, thr, P, N, i)
