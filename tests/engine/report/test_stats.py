"""Tests of engine/report/stats.py against scipy, their definitions and published tables (seeded data)."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from engine.report.stats import (average_ranks, friedman, holm, nemenyi_cd, paired_t_p, sign_flip_p,
                                 wilcoxon_p)


def _t_p_by_integration(t: float, df: int) -> float:
    """Two-sided tail of Student's t by numerical integration of its density (x = tan u)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    u = np.linspace(math.atan(abs(t)), math.pi / 2, 400_001)
    x = np.tan(u)
    integrand = np.exp(log_c - (df + 1) / 2 * np.log1p(x ** 2 / df)) * (1 + x ** 2)  # density * dx/du
    return 2 * float(np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(u)))


@pytest.mark.parametrize("n", [2, 3, 5, 9])
def test_paired_t_matches_the_integrated_density_and_scipy(n):
    rng = np.random.default_rng(n)
    x, y = rng.uniform(0.5, 0.9, n), rng.uniform(0.5, 0.9, n)
    d = x - y
    t = d.mean() / (d.std(ddof=1) / math.sqrt(n))
    assert paired_t_p(x, y) == pytest.approx(_t_p_by_integration(t, n - 1), abs=1e-6)
    assert paired_t_p(x, y) == pytest.approx(scipy_stats.ttest_rel(x, y).pvalue, abs=1e-12)


def test_paired_tests_match_their_definitions():
    x, y = np.array([0.81, 0.78, 0.90]), np.array([0.80, 0.70, 0.85])
    d = x - y
    flips = [abs(np.mean(np.array(s) * d)) for s in itertools.product((1, -1), repeat=3)]
    assert sign_flip_p(x, y) == sum(f >= abs(d.mean()) - 1e-12 for f in flips) / 8
    assert sign_flip_p(x, y) == 0.25  # all differences positive: only the identity and full flip tie
    assert math.isnan(paired_t_p(x[:1], y[:1])) and math.isnan(sign_flip_p([], []))
    assert math.isnan(paired_t_p(y + 0.125, y))  # equal differences: zero variance, no t statistic


def test_holm_steps_down_as_worked_by_hand():
    # sorted: 0.01 * 4 = 0.04; 0.02 * 3 = 0.06; 0.03 * 2 = 0.06 -> max(0.06, 0.06); 0.5 * 1 = 0.5
    assert holm([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])
    # the monotone step: 0.04 * 3 = 0.12 > 0.045 * 2 = 0.09, so the larger p keeps 0.12
    assert holm([0.04, 0.045, 0.9]) == pytest.approx([0.12, 0.12, 0.9])
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    adjusted = holm([0.01, math.nan, 0.04])  # a NaN does not count in m
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.04)


def test_holm_rejects_the_same_hypotheses_as_the_step_down_procedure():
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = rng.uniform(0, 0.1, 6)
        alpha = 0.05
        # Holm: walk the sorted p, reject while p_(i) <= alpha / (m - i), stop at the first failure.
        rejected = set()
        for i, index in enumerate(np.argsort(p)):
            if p[index] > alpha / (len(p) - i):
                break
            rejected.add(int(index))
        assert {i for i, a in enumerate(holm(p.tolist())) if a <= alpha} == rejected


def test_average_ranks_rank_the_best_first_and_share_ties():
    scores = np.array([[0.9, 0.8, 0.7], [0.6, 0.6, 0.9], [0.5, 0.7, 0.6]])
    # ranks per row: [1, 2, 3], [2.5, 2.5, 1], [3, 1, 2]
    assert average_ranks(scores).tolist() == pytest.approx([6.5 / 3, 5.5 / 3, 6 / 3])


def test_friedman_matches_scipy_and_the_textbook_formula():
    rng = np.random.default_rng(7)
    scores = rng.uniform(0.5, 0.9, (6, 4))  # continuous: no ties, so the untied formula is exact
    result = friedman(["a", "b", "c", "d"], scores)
    n, k = scores.shape
    ranks = average_ranks(scores)
    chi2 = 12 * n / (k * (k + 1)) * (np.sum(ranks ** 2) - k * (k + 1) ** 2 / 4)
    assert result.statistic == pytest.approx(chi2, rel=1e-12)
    assert result.p == pytest.approx(scipy_stats.chi2.sf(chi2, k - 1), rel=1e-9)
    reference = scipy_stats.friedmanchisquare(*scores.T)
    assert (result.statistic, result.p) == pytest.approx((reference.statistic, reference.pvalue))
    assert result.ranks == pytest.approx(tuple(ranks)) and result.cd == nemenyi_cd(4, 6)
    assert friedman(["a", "b"], scores[:, :2]) is None and friedman(["a", "b", "c"], scores[:1, :3]) is None


# Demšar (2006), Table 5(a): q_0.05 of the Nemenyi test for k = 2..10 classifiers.
DEMSAR_Q05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}


@pytest.mark.parametrize("k", sorted(DEMSAR_Q05))
def test_nemenyi_cd_uses_demsars_critical_values(k):
    n = 14
    assert nemenyi_cd(k, n) == pytest.approx(DEMSAR_Q05[k] * math.sqrt(k * (k + 1) / (6 * n)), abs=2e-3)


def _wilcoxon_exact_p(d: np.ndarray) -> float:
    """Two-sided exact p of the signed-rank statistic by enumerating every sign pattern."""
    ranks = scipy_stats.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    totals = np.array([ranks[np.array(s) > 0].sum() for s in itertools.product((1, -1), repeat=len(d))])
    return min(1.0, 2 * min(np.mean(totals <= observed), np.mean(totals >= observed)))


@pytest.mark.parametrize("n", [2, 4, 7])
def test_wilcoxon_matches_the_enumerated_null_distribution(n):
    rng = np.random.default_rng(n)
    x, y = rng.uniform(0.5, 0.9, n), rng.uniform(0.5, 0.9, n)
    assert wilcoxon_p(x, y) == pytest.approx(_wilcoxon_exact_p(x - y), abs=1e-12)
    assert wilcoxon_p(x, y) == pytest.approx(scipy_stats.wilcoxon(x, y).pvalue, abs=1e-12)


def test_wilcoxon_of_equal_scores_is_undefined_not_significant():
    x = np.array([0.7, 0.8, 0.9])
    assert math.isnan(wilcoxon_p(x, x.copy())) and math.isnan(wilcoxon_p(x, x + 1e-12))
