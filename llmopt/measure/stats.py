"""Order statistics over measured values."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), or None for no values."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def percentile_upper_bound(values: Sequence[float], q: float, confidence: float) -> float | None:
    """An upper confidence bound of the q-th percentile, free of any assumption on the distribution: the smallest
    order statistic x_(k) with P(Binomial(n, q/100) <= k - 1) >= confidence, so that the true percentile lies at or
    below it with at least that probability. None when n values cannot bound it (even their maximum covers less:
    1 - (q/100)^n < confidence); `samples_to_bound` says how many would."""
    from scipy.stats import binom

    n = len(values)
    if n == 0:
        return None
    share = q / 100
    data = sorted(values)
    for k in range(1, n + 1):
        if binom.cdf(k - 1, n, share) >= confidence:
            return data[k - 1]
    return None


def samples_to_bound(q: float, confidence: float) -> int:
    """The fewest values whose maximum bounds the q-th percentile at this confidence: 1 - (q/100)^n >= confidence."""
    import math

    return math.ceil(math.log(1 - confidence) / math.log(q / 100))
