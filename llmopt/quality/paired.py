"""Quality against a reference on the same documents: paired differences, output agreement, and MLPerf's gate.

Two modes' ROUGE on the same documents are compared document by document: the bootstrap resamples documents and
takes both scores of each resampled document together, so what varies between documents (some are easy to
summarize, some are not) cancels. The interval of the difference is then much narrower than the two separate
intervals suggest. MLPerf's LLM summarization benchmark accepts a mode whose ROUGE is at least 99% of the
reference's; here the gate passes when the whole 95% interval of the ratio is at or above 0.99, fails when it is
wholly below, and is inconclusive when it straddles the bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

GATE = 0.99  # MLPerf's bar: 99% of the reference's ROUGE
RESAMPLES = 1000


@dataclass(frozen=True)
class PairedDelta:
    n: int  # documents scored in both runs
    delta: float  # mean(mode) - mean(reference)
    low: float  # 95% interval of the difference, paired bootstrap
    high: float
    ratio: float | None  # mean(mode) / mean(reference)
    ratio_low: float | None
    ratio_high: float | None


def paired_delta(mode: Sequence[float], reference: Sequence[float], seed: int = 0) -> PairedDelta | None:
    """Mean difference of paired scores (same documents, same order) with its paired-bootstrap 95% interval."""
    import numpy as np

    if len(mode) != len(reference):
        raise ValueError("paired scores must cover the same documents")
    if not mode:
        return None
    a, b = np.asarray(mode, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, a.size, size=(RESAMPLES, a.size))
    sa, sb = a[picks].mean(axis=1), b[picks].mean(axis=1)
    low, high = np.percentile(sa - sb, [2.5, 97.5])
    ratio = ratio_low = ratio_high = None
    if b.mean() > 0:
        ratio = float(a.mean() / b.mean())
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(sb > 0, sa / sb, np.nan)
        ratio_low, ratio_high = (float(x) for x in np.nanpercentile(ratios, [2.5, 97.5]))
    return PairedDelta(int(a.size), float(a.mean() - b.mean()), float(low), float(high), ratio, ratio_low, ratio_high)


def unpaired_interval(mode: Sequence[float], reference: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """The same difference's interval when the two runs are resampled independently (for comparison only)."""
    import numpy as np

    a, b = np.asarray(mode, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    rng = np.random.default_rng(seed)
    sa = a[rng.integers(0, a.size, size=(RESAMPLES, a.size))].mean(axis=1)
    sb = b[rng.integers(0, b.size, size=(RESAMPLES, b.size))].mean(axis=1)
    low, high = np.percentile(sa - sb, [2.5, 97.5])
    return float(low), float(high)


def gate(delta: PairedDelta | None, bar: float = GATE) -> str | None:
    """ "passed", "failed" or "inconclusive" against `bar` x the reference's ROUGE; None without a ratio."""
    if delta is None or delta.ratio_low is None or delta.ratio_high is None:
        return None
    if delta.ratio_low >= bar:
        return "passed"
    if delta.ratio_high < bar:
        return "failed"
    return "inconclusive"


def agreement(mode: Sequence[str], reference: Sequence[str]) -> float | None:
    """The share of documents whose greedy summary is the reference's, word for word (whitespace aside)."""
    pairs = list(zip(mode, reference, strict=True))
    if not pairs:
        return None
    return sum(" ".join(a.split()) == " ".join(b.split()) for a, b in pairs) / len(pairs)
