"""Statistics shared by the tables and the calibration: pure functions of numbers, no presentation."""

from __future__ import annotations

import math

ALPHA = 0.05  # two-sided significance level of the paired test
POWER = 0.8


def detectable_delta(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean difference a two-sided paired t-test on ``n`` seeds detects with ``power``.

    ``sd_diff`` is the standard deviation of the per-seed differences (variant − baseline). Uses the
    usual t approximation ``δ = (t_{1−α/2, n−1} + t_{power, n−1}) · sd_diff / √n``; inf for n < 2.
    """
    from scipy import stats  # imported here: the tables load this module and need only the constants

    if n < 2:
        return math.inf
    df = n - 1
    return (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd_diff / math.sqrt(n)
