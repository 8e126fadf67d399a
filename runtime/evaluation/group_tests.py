"""Tests for differences between subgroups (numpy only; the tests check them against scipy).

* Proportions (sensitivity, specificity) of independent groups: **Fisher's exact test** for two
  groups (:func:`hipcad.runtime.evaluation.paired_tests.fisher_exact`), **Pearson's chi-square
  test of homogeneity** of the k x 2 table for more (``df = k - 1``); when an expected count is
  below 5, where the chi-square approximation fails, its p-value is found by Monte Carlo over
  tables with the same margins.
* AUCs: a **Wald chi-square test of equal AUCs** built on DeLong's structural components. The
  covariance of the k AUCs is ``S_ij = [i = j] var(V10_i) / m_i + cov(V01_i, V01_j) / n`` when the
  groups share their negatives (fractures of each type against all intact halves), and
  diagonal with DeLong's variances when the groups are disjoint; then
  ``X^2 = (L a)^T (L S L^T)^-1 (L a)`` with ``L`` the k-1 successive differences, ``df = k - 1``
  (for two groups, the square of DeLong's z). A group with an AUC of 0 or 1 (small groups) has
  no DeLong variance, and the Wald test would call any difference certain; then a
  **class-stratified permutation test** of the weighted spread of the AUCs decides.
* **Holm's step-down adjustment** of a family of p-values.

The chi-square survival function is the regularised upper incomplete gamma function
``Q(df/2, x/2)``, by its series or continued fraction (Numerical Recipes, 6.2).
"""

from __future__ import annotations

import math

import numpy as np

from hipcad.runtime.evaluation.paired_tests import fisher_exact
from hipcad.runtime.evaluation.stats import delong_components


def _gamma_q(a: float, x: float) -> float:
    """The regularised upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a)."""
    if x <= 0:
        return 1.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1:  # series for P(a, x)
        term = total = 1.0 / a
        ap = a
        for _ in range(10000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-16:
                break
        return max(0.0, 1.0 - total * math.exp(log_front))
    tiny = 1e-300  # Lentz's continued fraction for Q(a, x)
    b = x + 1 - a
    c, d = 1 / tiny, 1 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-16:
            break
    return min(1.0, math.exp(log_front) * h)


def chi2_sf(x: float, df: int) -> float:
    """P(X >= x) for a chi-square variable with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError("df must be positive")
    if not math.isfinite(x):
        return 0.0 if x > 0 else 1.0
    return _gamma_q(df / 2.0, x / 2.0)


def proportions_test(successes, totals, n_resamples: int = 10000, seed: int = 0) -> dict:
    """Do k independent proportions ``successes / totals`` differ? Fisher's exact test for k = 2,
    Pearson's chi-square test of homogeneity for k > 2 -- with a Monte Carlo p-value (tables drawn
    with the same margins, as R's ``chisq.test(simulate.p.value = TRUE)``) when an expected count is
    below 5. Groups with a zero total are left out. Returns ``{"test", "p_value", "groups"}`` (+
    ``statistic``, ``df`` for chi-square) or ``{"test": None, "note"}`` with fewer than two groups."""
    pairs = [(int(k), int(n)) for k, n in zip(successes, totals) if int(n) > 0]
    if len(pairs) < 2:
        return {"test": None, "p_value": None, "note": "fewer than two groups with cases"}
    if len(pairs) == 2:
        (k1, n1), (k2, n2) = pairs
        result = fisher_exact([[k1, n1 - k1], [k2, n2 - k2]])
        return {"test": "Fisher's exact test (two-sided)", "p_value": result["p_value"], "groups": 2}
    table = np.array([[k, n - k] for k, n in pairs], dtype=np.float64)
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    out = {"test": "Pearson's chi-square test of homogeneity", "groups": len(pairs), "df": len(pairs) - 1}
    if np.any(table.sum(axis=0) == 0):  # everyone a success (or a failure): no difference to see
        return {**out, "statistic": 0.0, "p_value": 1.0}
    stat = float(np.sum((table - expected) ** 2 / expected))
    out.update(statistic=stat, p_value=chi2_sf(stat, len(pairs) - 1))
    if np.any(expected < 5):  # the chi-square distribution is a poor guide: tables drawn with these margins decide
        rng = np.random.default_rng(seed)
        sizes = table.sum(axis=1).astype(np.int64)
        # method "count" samples by counting draws; numpy's default "marginals" gave visibly fewer of the
        # rarest tables here (checked against the exact probability in the tests)
        draws = rng.multivariate_hypergeometric(sizes, int(table[:, 0].sum()), size=n_resamples,
                                                method="count").astype(np.float64)
        sims = np.stack([draws, sizes - draws], axis=-1)
        stats = np.sum((sims - expected) ** 2 / expected, axis=(1, 2))
        exceed = int(np.sum(stats >= stat - 1e-9 * max(1.0, stat)))
        out.update(test="Pearson's chi-square test of homogeneity, Monte Carlo p-value (an expected count is below 5; "
                        f"{n_resamples} tables with the same margins, seed {seed})",
                   p_value=(1 + exceed) / (1 + n_resamples))
    return out


def _components(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(AUC, V10 per positive, V01 per negative): DeLong's structural components (midranks)."""
    v10, v01, _ = delong_components(pos, neg)
    return float(v10.mean()), v10, v01


def _spread(aucs: np.ndarray, weights: np.ndarray) -> float:
    mean = np.sum(weights * aucs) / np.sum(weights)
    return float(np.sum(weights * (aucs - mean) ** 2))


def _permutation_test(groups, shared_negatives: bool, n_resamples: int, seed: int) -> dict:
    """Class-stratified permutation test of the weighted spread of the AUCs (for groups whose
    DeLong variance is zero: an AUC of 0 or 1 in a small group)."""
    rng = np.random.default_rng(seed)
    sizes_p = np.array([len(p) for p, _ in groups])
    cuts_p = np.cumsum(sizes_p)[:-1]
    weights = sizes_p * (np.array([len(n) for _, n in groups]) if not shared_negatives else 1)
    if shared_negatives:  # a positive's share of negatives below it does not depend on its group
        v10 = _components(np.concatenate([p for p, _ in groups]), groups[0][1])[1]
        observed = _spread(np.array([c.mean() for c in np.split(v10, cuts_p)]), weights)
        stats = [_spread(np.array([c.mean() for c in np.split(rng.permutation(v10), cuts_p)]), weights)
                 for _ in range(n_resamples)]
    else:
        pos, neg = np.concatenate([p for p, _ in groups]), np.concatenate([n for _, n in groups])
        cuts_n = np.cumsum([len(n) for _, n in groups])[:-1]

        def spread(ps, ns):
            return _spread(np.array([_components(a, b)[0] for a, b in zip(np.split(ps, cuts_p), np.split(ns, cuts_n))]),
                           weights)
        observed = spread(pos, neg)
        stats = [spread(rng.permutation(pos), rng.permutation(neg)) for _ in range(n_resamples)]
    exceed = int(np.sum(np.asarray(stats) >= observed - 1e-12))
    return {"test": f"class-stratified permutation test of the AUCs' spread ({n_resamples} resamples, seed {seed}; "
                    "DeLong's variance is zero in a group)",
            "statistic": observed, "p_value": (1 + exceed) / (1 + n_resamples), "groups": len(groups)}


def auc_test(groups: list[tuple[np.ndarray, np.ndarray]], shared_negatives: bool, n_resamples: int = 2000,
             seed: int = 0) -> dict:
    """Are the AUCs of k groups (each ``(positive scores, negative scores)``) equal? With
    ``shared_negatives`` every group's negatives are the same cases in the same order. Groups
    without positives or negatives are left out. A group with an AUC of 0 or 1 has no DeLong
    variance; then a class-stratified permutation test decides. Returns ``{"test",
    "statistic", "df", "p_value", "groups"}`` or ``{"test": None, "note"}``."""
    groups = [(np.asarray(p, float), np.asarray(n, float)) for p, n in groups if len(p) and len(n)]
    k = len(groups)
    if k < 2:
        return {"test": None, "p_value": None, "note": "fewer than two groups with both classes"}
    comps = [_components(p, n) for p, n in groups]
    auc = np.array([c[0] for c in comps])
    if np.any((auc <= 0) | (auc >= 1)):
        return _permutation_test(groups, shared_negatives, n_resamples, seed)
    cov = np.zeros((k, k))
    for i, (_, v10, v01) in enumerate(comps):
        cov[i, i] = (np.var(v10, ddof=1) / v10.size if v10.size > 1 else 0.0)
        if not shared_negatives:
            cov[i, i] += np.var(v01, ddof=1) / v01.size if v01.size > 1 else 0.0
    if shared_negatives:
        v01s = np.stack([c[2] for c in comps])
        n = v01s.shape[1]
        cov += np.cov(v01s, ddof=1) / n if n > 1 else 0.0
    contrast = np.eye(k)[:-1] - np.eye(k)[1:]
    diff = contrast @ auc
    var = contrast @ cov @ contrast.T
    name = ("Wald chi-square test of equal AUCs, DeLong covariance "
            + ("(groups share the negatives)" if shared_negatives else "(independent groups)"))
    try:
        stat = float(diff @ np.linalg.solve(var, diff))
    except np.linalg.LinAlgError:
        return _permutation_test(groups, shared_negatives, n_resamples, seed)
    if not math.isfinite(stat) or stat < 0:
        return _permutation_test(groups, shared_negatives, n_resamples, seed)
    return {"test": name, "statistic": stat, "df": k - 1, "p_value": chi2_sf(stat, k - 1), "groups": k}


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (``None`` entries stay ``None`` and do not count)."""
    idx = [i for i, p in enumerate(p_values) if p is not None]
    order = sorted(idx, key=lambda i: p_values[i])
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[i]))
        out[i] = running
    return out
