"""Is the number on the screen a probability? Calibration figures and the fit that makes it one.

Figures (of fracture probabilities ``p`` against 0/1 labels ``y``, one per half):

* **Reliability diagram**: the halves in ``n_bins`` equal-width bins of ``p`` (0-0.1, ..., 0.9-1;
  a ``p`` of exactly 1 in the last); per bin the mean ``p`` and the observed share of fractures
  with its Wilson 95 % interval.
* **Expected calibration error (ECE)**: ``sum_b (n_b / n) |observed_b - mean p_b|`` over those
  bins -- on the probability of *fracture* as shown, not on the winning class's confidence. It is
  biased upwards on small sets (a perfectly calibrated model has ECE > 0 on a finite sample).
* **Brier score**: ``mean((p - y)^2)``; **log loss**: ``-mean(y log p + (1-y) log(1-p))``.
* ECE and Brier carry a seeded percentile-bootstrap 95 % interval (halves resampled).

The fit (``hipcad train`` on its validation split, ``hipcad calibrate`` on a site's labelled set)
minimises the log loss of ``sigmoid(d / T + b)`` over the halves' log-odds ``d = l1 - l0``:

* ``temperature`` (the default; Guo et al. 2017): ``b = 0``, one parameter ``T`` -- it changes
  how confident the model is, never which way it leans, and keeps 0.5 at 0.5.
* ``platt`` (Platt 1999): ``T`` and ``b`` -- it also removes a lean, for instance the one a
  class-weighted loss leaves (training weights fractures up).

Both fit to Platt's targets, not to the bare 0/1 labels: a fractured half counts as
``(N+ + 1) / (N+ + 2)`` and an intact one as ``1 / (N- + 2)`` (``N+``, ``N-``: how many of each).
A good model often separates a site's few hundred halves perfectly; with bare labels the best fit
is then an infinitely sharp one, which says more about the sample than the model. The targets are
the Bayes estimate of a half's chance of fracture under a uniform prior and keep the fit finite.

Both are monotone, so every threshold has an exact counterpart on the new scale:
:func:`calibrated_manifest` converts the operating points, and no verdict changes.
"""

from __future__ import annotations

import datetime as _dt
import math

import numpy as np

from hipcad.runtime.evaluation.stats import proportion_ci
from hipcad.runtime.inference.verdict import Calibration, log_odds_probability

METHODS = ("temperature", "platt")
N_BINS = 10
T_RANGE = (0.02, 50.0)  # a temperature outside this range means the data cannot pin it down


def _arrays(y, p) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if y.size != p.size or y.size == 0:
        raise ValueError(f"need as many labels as probabilities (got {y.size} and {p.size}), at least one")
    if not np.all(np.isin(y, (0.0, 1.0))):
        raise ValueError("labels must be 0 or 1")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    return y, p


def _bin_of(p: np.ndarray, n_bins: int) -> np.ndarray:
    return np.minimum((p * n_bins).astype(np.int64), n_bins - 1)


def expected_calibration_error(y, p, n_bins: int = N_BINS) -> float:
    y, p = _arrays(y, p)
    b = _bin_of(p, n_bins)
    n = np.bincount(b, minlength=n_bins)
    gap = np.abs(np.bincount(b, y, n_bins) - np.bincount(b, p, n_bins))  # n_b * |observed - mean p|
    return float(gap.sum() / y.size) if n.sum() else float("nan")


def brier_score(y, p) -> float:
    y, p = _arrays(y, p)
    return float(np.mean((p - y) ** 2))


def log_loss(y, p, eps: float = 1e-12) -> float:
    y, p = _arrays(y, p)
    p = np.clip(p, eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def reliability_bins(y, p, n_bins: int = N_BINS) -> list[dict]:
    """Per bin: ``lo``, ``hi``, ``n``, ``mean_predicted``, ``observed`` (share of fractures) and
    its Wilson ``ci95``; empty bins have ``None`` values."""
    y, p = _arrays(y, p)
    b = _bin_of(p, n_bins)
    out = []
    for i in range(n_bins):
        sel = b == i
        n = int(sel.sum())
        k = int(y[sel].sum())
        lo, hi = proportion_ci(k, n, "wilson") if n else (None, None)
        out.append({"lo": i / n_bins, "hi": (i + 1) / n_bins, "n": n, "fractures": k,
                    "mean_predicted": float(p[sel].mean()) if n else None,
                    "observed": k / n if n else None, "ci95": [lo, hi]})
    return out


def calibration_metrics(y, p, n_bins: int = N_BINS, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """ECE and Brier score (each ``{"value", "ci95"}``), log loss, the reliability bins and how
    they were computed."""
    y, p = _arrays(y, p)
    ece, brier = expected_calibration_error(y, p, n_bins), brier_score(y, p)
    ci = {"ece": [None, None], "brier": [None, None]}
    if n_bootstrap > 0 and y.size > 1:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, y.size, size=(int(n_bootstrap), y.size))
        eces = [expected_calibration_error(y[i], p[i], n_bins) for i in idx]
        briers = np.mean((p[idx] - y[idx]) ** 2, axis=1)
        ci = {"ece": [float(v) for v in np.percentile(eces, [2.5, 97.5])],
              "brier": [float(v) for v in np.percentile(briers, [2.5, 97.5])]}
    return {
        "ece": {"value": ece, "ci95": ci["ece"]},
        "brier": {"value": brier, "ci95": ci["brier"]},
        "log_loss": log_loss(y, p),
        "n": int(y.size),
        "n_bins": n_bins,
        "reliability": reliability_bins(y, p, n_bins),
        "definition": f"ECE: {n_bins} equal-width bins of the fracture probability, sum of |observed share of "
                      f"fractures - mean probability| weighted by the bin's share of halves; Brier: mean squared "
                      f"difference of probability and label; intervals: percentile bootstrap of the halves "
                      f"({int(n_bootstrap)} resamples, seed {seed})",
    }


# -- fitting ---------------------------------------------------------------------------------------

def platt_targets(y) -> np.ndarray:
    """Platt's (1999) targets for 0/1 labels: ``(N+ + 1) / (N+ + 2)`` for 1, ``1 / (N- + 2)`` for 0."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n_pos = float(np.sum(y == 1))
    return np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1.0 / (y.size - n_pos + 2))


def _nll(d: np.ndarray, t: np.ndarray, a: float, b: float) -> float:
    """Mean cross-entropy of targets ``t`` in [0, 1] against ``sigmoid(a d + b)``."""
    z = a * d + b
    # -[t log s(z) + (1-t) log s(-z)] = t log(1 + exp(-z)) + (1-t) log(1 + exp(z))
    return float(np.mean(t * np.logaddexp(0.0, -z) + (1 - t) * np.logaddexp(0.0, z)))


def _nll_grad_hess(d, t, a, b):
    z = a * d + b
    s = 0.5 * (1.0 + np.tanh(0.5 * z))  # the logistic function, without overflow
    r = s - t  # d nll / d z per case
    w = s * (1 - s)
    x = np.stack([d, np.ones_like(d)])
    return x @ r / d.size, (x * w) @ x.T / d.size


def fit_calibration(logits, y, method: str = "temperature") -> dict:
    """Fit ``sigmoid(d / T + b)`` to labelled log-odds ``d = l1 - l0`` by minimising the log loss
    against Platt's targets (:func:`platt_targets`).

    ``temperature``: golden-section search over ``log T`` in :data:`T_RANGE` (the loss is
    unimodal there), ``b = 0``. ``platt``: Newton's method on ``(1/T, b)`` (the loss is convex),
    started from the temperature fit. Returns ``{"method", "temperature", "bias", "log_loss_before",
    "log_loss_after"}``. ``ValueError`` when both classes are not present or the fit leaves the
    range (the scores do not order the cases). ``log_loss_before`` and ``log_loss_after`` are
    on the bare labels.
    """
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    d = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if d.size != y.size or not np.all(np.isfinite(d)):
        raise ValueError("need one finite log-odds per label")
    if y.min() == y.max():
        raise ValueError("calibration needs labelled halves of both classes (fractured and not)")
    labels, y = y, platt_targets(y)
    lo, hi = math.log(1 / T_RANGE[1]), math.log(1 / T_RANGE[0])  # over u = log(1/T)
    g = (math.sqrt(5) - 1) / 2
    a_, b_ = lo, hi
    c, e = b_ - g * (b_ - a_), a_ + g * (b_ - a_)
    fc, fe = _nll(d, y, math.exp(c), 0.0), _nll(d, y, math.exp(e), 0.0)
    while b_ - a_ > 1e-7:
        if fc < fe:
            b_, e, fe = e, c, fc
            c = b_ - g * (b_ - a_)
            fc = _nll(d, y, math.exp(c), 0.0)
        else:
            a_, c, fc = c, e, fe
            e = a_ + g * (b_ - a_)
            fe = _nll(d, y, math.exp(e), 0.0)
    u = (a_ + b_) / 2
    if u - lo < 1e-4 or hi - u < 1e-4:
        raise ValueError(f"the fitted temperature lies at the end of its range {T_RANGE}: these scores cannot be "
                         "calibrated (they do not order the cases on this set)")
    a, b = math.exp(u), 0.0
    if method == "platt":
        for _ in range(100):
            grad, hess = _nll_grad_hess(d, y, a, b)
            step = np.linalg.solve(hess + 1e-12 * np.eye(2), grad)
            t = 1.0
            while t > 1e-6 and (a - t * step[0] <= 0 or _nll(d, y, a - t * step[0], b - t * step[1]) > _nll(d, y, a, b)):
                t /= 2
            a, b = a - t * step[0], b - t * step[1]
            if np.max(np.abs(t * step)) < 1e-10:
                break
        if not (T_RANGE[0] <= 1 / a <= T_RANGE[1]) or not math.isfinite(b):
            raise ValueError("the Platt fit failed: the scores do not order these cases")
    return {"method": method, "temperature": float(1.0 / a), "bias": float(b),
            "log_loss_before": _nll(d, labels, 1.0, 0.0), "log_loss_after": _nll(d, labels, a, b)}


def convert_threshold(threshold: float, old: tuple[float, float], new: tuple[float, float]) -> float:
    """The threshold on the ``new`` (temperature, bias) scale that calls exactly the same halves
    as ``threshold`` on the ``old`` one. 0, 1 and infinite thresholds stay (all or nothing)."""
    t = float(threshold)
    if not (0.0 < t < 1.0):
        return t
    d = Calibration(*old).log_odds(t)  # the log-odds at which the old threshold sits
    return float(log_odds_probability(d, *new))


def calibrated_manifest(manifest: dict, fit: dict, fitted_on: dict, before: dict, after: dict,
                        reference: dict | None = None) -> dict:
    """A copy of ``manifest`` with its ``calibration`` replaced by ``fit`` and every operating
    point's threshold converted to the new scale (``threshold_uncalibrated``: the same point on
    the raw softmax's scale)."""
    old_entry = manifest.get("calibration") or {}
    old = (float(old_entry.get("temperature", 1.0)), float(old_entry.get("bias", 0.0)))
    new = (float(fit["temperature"]), float(fit["bias"]))
    points = {}
    for name, point in (manifest.get("operating_points") or {}).items():
        point = dict(point)
        point["threshold"] = convert_threshold(point["threshold"], old, new)
        point["threshold_uncalibrated"] = convert_threshold(point["threshold"], new, (1.0, 0.0))
        point["scale"] = f"calibrated probability ({fit['method']} scaling)"
        points[name] = point
    out = dict(manifest, operating_points=points)
    out["calibration"] = {
        "method": fit["method"],
        "temperature": new[0],
        "bias": new[1],
        "rule": "probability = sigmoid((l1 - l0) / temperature + bias)",
        "objective": "mean log loss of the labelled halves against Platt's targets",
        "fitted_on": fitted_on,
        "before": before,
        "after": after,
        "replaced": old_entry or None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if out["calibration"]["replaced"]:
        out["calibration"]["replaced"] = {k: old_entry.get(k) for k in ("method", "temperature", "bias", "fitted_on")}
    if reference is not None:
        out["reference"] = reference
    return out


def summary(y, logits, fit: dict, current: tuple[float, float] = (1.0, 0.0)) -> tuple[dict, dict]:
    """(before, after): log loss, ECE and Brier on the ``current`` (temperature, bias) scale (the
    raw softmax by default) and on the fitted one."""
    y = np.asarray(y)
    p0 = log_odds_probability(logits, *current)
    p1 = log_odds_probability(logits, fit["temperature"], fit["bias"])
    return tuple({"log_loss": log_loss(y, p), "ece": expected_calibration_error(y, p), "brier": brier_score(y, p)}
                 for p in (p0, p1))
