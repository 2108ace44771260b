"""Tests of engine/report/stats.py: the paired tests against their definitions."""
import itertools
import math

import numpy as np
import pytest

from engine.report.stats import paired_t_p, sign_flip_p, student_t_two_sided_p


def _t_p_by_integration(t: float, df: int) -> float:
    """Two-sided tail of Student's t by numerical integration of its density (x = tan u)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    u = np.linspace(math.atan(abs(t)), math.pi / 2, 400_001)
    x = np.tan(u)
    integrand = np.exp(log_c - (df + 1) / 2 * np.log1p(x ** 2 / df)) * (1 + x ** 2)  # density * dx/du
    return 2 * float(np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(u)))


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("t", [0.0, 0.3, 1.7, 4.2])
def test_student_t_p_matches_integrated_density(t, df):
    # The integration error of the trapezoid rule on 400k points is far below 1e-6.
    assert student_t_two_sided_p(t, df) == pytest.approx(_t_p_by_integration(t, df), abs=1e-6)


def test_paired_tests_match_their_definitions():
    x, y = np.array([0.81, 0.78, 0.90]), np.array([0.80, 0.70, 0.85])
    d = x - y
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert paired_t_p(x, y) == pytest.approx(_t_p_by_integration(t, 2), abs=1e-6)
    flips = [abs(np.mean(np.array(s) * d)) for s in itertools.product((1, -1), repeat=3)]
    assert sign_flip_p(x, y) == sum(f >= abs(d.mean()) - 1e-12 for f in flips) / 8
    assert sign_flip_p(x, y) == 0.25  # all differences positive: only the identity and full flip tie
    assert math.isnan(paired_t_p(x[:1], y[:1])) and math.isnan(sign_flip_p([], []))
    assert math.isnan(paired_t_p(y + 0.125, y))  # equal differences: zero variance, no t statistic
