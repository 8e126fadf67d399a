"""The subgroup tests against scipy, and their behaviour under the null and under a planted difference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as st

from hipcad.runtime.evaluation.group_tests import auc_test, chi2_sf, holm, proportions_test
from hipcad.runtime.evaluation.stats import delong_auc_variance


@pytest.mark.parametrize("x,df", [(0.0, 1), (0.5, 1), (3.841, 1), (10.0, 3), (100.0, 7), (0.01, 10), (50.0, 40),
                                  (1e-3, 2), (1e3, 5), (7.5, 11)])
def test_chi2_sf_matches_scipy(x, df):
    assert chi2_sf(x, df) == pytest.approx(st.chi2.sf(x, df), rel=1e-9, abs=1e-300)


def test_proportions_test_matches_scipy():
    table = np.array([[10, 15], [20, 13], [17, 19], [30, 30]])
    got = proportions_test(table[:, 0], table.sum(axis=1))
    chi2, p, dof, _ = st.chi2_contingency(table, correction=False)
    assert got["test"].startswith("Pearson") and got["df"] == dof == 3
    assert got["statistic"] == pytest.approx(chi2) and got["p_value"] == pytest.approx(p)
    two = proportions_test([10, 20], [15, 23])
    assert two["test"].startswith("Fisher") and two["p_value"] == pytest.approx(st.fisher_exact([[10, 5], [20, 3]]).pvalue)
    assert proportions_test([3], [4])["test"] is None  # one group: nothing to compare
    assert proportions_test([3, 0], [4, 0])["test"] is None  # a group without cases is left out
    assert proportions_test([5, 6, 7], [5, 6, 7])["p_value"] == 1.0  # all detected everywhere


def test_sparse_tables_get_a_monte_carlo_p_value():
    """2 false alarms in 18 against none in 108: the chi-square approximation claims p = 0.002; the
    tables with these margins say otherwise (the exact p, both alarms in the smallest group, is 153/7875 = 0.019)."""
    got = proportions_test([16, 57, 51], [18, 57, 51])
    assert "Monte Carlo" in got["test"] and got["statistic"] > 10
    assert got["p_value"] == pytest.approx(153 / 7875, abs=0.004) and st.chi2.sf(got["statistic"], 2) < 0.005
    assert proportions_test([16, 57, 51], [18, 57, 51]) == got  # seeded


def test_auc_test_of_two_independent_groups_is_delongs_z_squared():
    rng = np.random.default_rng(3)
    groups = [(rng.normal(1.2, 1, 40), rng.normal(0, 1, 70)), (rng.normal(0.5, 1, 35), rng.normal(0, 1, 60))]
    got = auc_test(groups, shared_negatives=False)
    (a1, v1), (a2, v2) = (delong_auc_variance(np.r_[np.ones(len(p)), np.zeros(len(n))], np.r_[p, n]) for p, n in groups)
    z = (a1 - a2) / np.sqrt(v1 + v2)
    assert got["df"] == 1 and got["statistic"] == pytest.approx(z * z)
    assert got["p_value"] == pytest.approx(2 * st.norm.sf(abs(z)))


@pytest.mark.parametrize("shared", [True, False])
def test_auc_test_holds_its_size_and_finds_a_planted_difference(shared):
    rng = np.random.default_rng(11)

    def groups(shift):
        neg = rng.normal(0, 1, 120)
        return [(rng.normal(1.2, 1, 40), neg if shared else rng.normal(0, 1, 120)),
                (rng.normal(1.2 - shift, 1, 40), neg if shared else rng.normal(0, 1, 120)),
                (rng.normal(1.2, 1, 30), neg if shared else rng.normal(0, 1, 120))]
    null = [auc_test(groups(0.0), shared)["p_value"] for _ in range(300)]
    assert 0.02 <= np.mean(np.array(null) < 0.05) <= 0.09  # about 5 % false alarms
    planted = [auc_test(groups(1.0), shared)["p_value"] for _ in range(50)]
    assert np.mean(np.array(planted) < 0.05) >= 0.9


def test_auc_of_one_falls_back_to_a_permutation_test():
    neg = np.linspace(0, 1, 30)
    perfect = (np.linspace(2, 3, 8), neg)  # AUC 1: DeLong's variance is 0
    poor = (np.linspace(0.2, 0.9, 20), neg)
    got = auc_test([perfect, poor], shared_negatives=True, n_resamples=500)
    assert got["test"].startswith("class-stratified permutation") and 1 / 501 <= got["p_value"] < 0.01
    same = auc_test([perfect, (np.linspace(2, 3, 9), neg)], shared_negatives=True, n_resamples=500)
    assert same["p_value"] == 1.0  # both perfect: no difference


def test_holm_matches_the_step_down_rule():
    assert holm([0.01, None, 0.04, 0.03]) == [pytest.approx(0.03), None, pytest.approx(0.06), pytest.approx(0.06)]
    assert holm([0.5, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]
    assert holm([]) == []
