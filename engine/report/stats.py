"""The report's paired tests, both two-sided, on the per-seed differences d between a strategy
and FT: Student's t (df = n - 1) and the exact sign-flip permutation test (with 3 seeds its
smallest possible p is 0.25)."""
from __future__ import annotations

import itertools
import math

import numpy as np

TIE_TOLERANCE = 1e-9  # means of count ratios closer than this differ only by float rounding


def paired_t_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sided p of the paired t-test of x against y; NaN where the test is undefined (fewer
    than two pairs, or all differences equal: zero variance)."""
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    n = len(d)
    sd = d.std(ddof=1) if n > 1 else 0.0
    if sd <= TIE_TOLERANCE:
        return math.nan
    return student_t_two_sided_p(d.mean() / (sd / math.sqrt(n)), n - 1)


def student_t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with integer df, by the finite series of Abramowitz and
    Stegun 26.7.3/26.7.4 (exact for integer df, so no SciPy is needed)."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    term = total = 1.0
    if df % 2:
        if df == 1:
            return 1.0 - 2.0 * theta / math.pi
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = (2.0 / math.pi) * (theta + math.sin(theta) * math.cos(theta) * total)
    else:
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = math.sin(theta) * total
    return max(0.0, 1.0 - inside)


def sign_flip_p(x: np.ndarray, y: np.ndarray) -> float:
    """Exact two-sided sign-flip permutation p of the mean paired difference (NaN without pairs)."""
    d = np.asarray(x, np.float64) - np.asarray(y, np.float64)
    if len(d) == 0:
        return math.nan
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    flipped = np.abs((signs * d).mean(axis=1))
    return float(np.mean(flipped >= abs(d.mean()) - 1e-12))


