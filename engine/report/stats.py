"""The report's tests (scipy.stats for every distribution).

Per (dataset, backbone) case, on the per-seed differences d between a strategy and FT, both
two-sided: Student's paired t (df = n - 1) and the exact sign-flip permutation test (with 3 seeds
its smallest possible p is 0.25, so neither can separate strategies on its own).

Across the cases (Demšar 2006, J. Mach. Learn. Res. 7:1-30), each case's seed-mean per strategy:
- the Friedman test over all strategies, with their average ranks (rank 1 = best);
- the Nemenyi critical difference of average ranks at alpha, for the CD diagram;
- the Wilcoxon signed-rank test of each strategy against FT, Holm-corrected over the strategies.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

TIE_TOLERANCE = 1e-9  # means of count ratios closer than this differ only by float rounding
ALPHA = 0.05


def paired_t_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p of the paired t-test of x against y; NaN where the test is undefined (fewer
    than two pairs, or all differences equal: zero variance)."""
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    n = len(d)
    sd = d.std(ddof=1) if n > 1 else 0.0
    if sd <= TIE_TOLERANCE:
        return math.nan
    return float(2 * stats.t.sf(abs(d.mean()) / (sd / math.sqrt(n)), n - 1))


def sign_flip_p(x: np.ndarray, y: np.ndarray) -> float:
    """Exact two-sided sign-flip permutation p of the mean paired difference (NaN without pairs)."""
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    if len(d) == 0:
        return math.nan
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    flipped = np.abs((signs * d).mean(axis=1))
    return float(np.mean(flipped >= abs(d.mean()) - 1e-12))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order; NaNs stay NaN and do not count."""
    p = np.asarray(p_values, np.float64)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    adjusted = np.full(len(p), math.nan)
    running = 0.0
    for i, index in enumerate(order):  # the i-th smallest p is multiplied by (m - i)
        running = max(running, min(1.0, (len(order) - i) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """Per column (strategy), the mean over rows (cases) of its rank within the row: 1 = highest
    score, tied scores share the mean of their ranks."""
    return stats.rankdata(-np.asarray(scores, np.float64), axis=1).mean(axis=0)


def nemenyi_cd(k: int, n: int, alpha: float = ALPHA) -> float:
    """Critical difference of average ranks of k strategies over n cases (Nemenyi):
    q_alpha * sqrt(k (k + 1) / (6 n)), q_alpha the studentized range quantile over sqrt(2)."""
    q_alpha = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q_alpha * math.sqrt(k * (k + 1) / (6 * n)))


@dataclass(frozen=True)
class Friedman:
    """The Friedman test of k strategies over n cases and the Nemenyi CD of their ranks."""

    strategies: tuple[str, ...]
    cases: int
    statistic: float
    p: float
    ranks: tuple[float, ...]  # average ranks, in the order of `strategies`
    cd: float


def friedman(strategies: list[str], scores: np.ndarray, alpha: float = ALPHA) -> Friedman | None:
    """The test on `scores` (cases x strategies); None where it is undefined (fewer than three
    strategies or two cases). Scores equal in every case give p = NaN."""
    scores = np.asarray(scores, np.float64)
    n, k = scores.shape
    if k < 3 or n < 2:
        return None
    statistic, p = stats.friedmanchisquare(*scores.T)
    return Friedman(tuple(strategies), n, float(statistic), float(p), tuple(average_ranks(scores).tolist()),
                    nemenyi_cd(k, n, alpha))


def wilcoxon_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of x against y over paired cases (zero differences
    dropped, exact distribution for small n); NaN with no nonzero difference."""
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    d[np.abs(d) <= TIE_TOLERANCE] = 0.0  # float rounding is no difference
    if not d.any():
        return math.nan
    return float(stats.wilcoxon(d, zero_method="wilcox").pvalue)
