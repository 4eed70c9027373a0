"""Quality against a reference on the same documents: paired differences, output agreement, and MLPerf's gate.

Two modes' ROUGE on the same documents are compared document by document: the bootstrap resamples documents and
takes both scores of each resampled document together, so what varies between documents (some are easy to
summarize, some are not) cancels. The interval of the difference is then much narrower than the two separate
intervals suggest. MLPerf's LLM summarization benchmark accepts a mode whose ROUGE-1, ROUGE-2 and ROUGE-L are each
at least 99% of the reference's. MLPerf compares point estimates over its whole dataset; on 100 documents a point
estimate is noise, so here the gate passes when the 95% interval of every ratio is at or above 0.99, fails when one
is wholly below, and is inconclusive otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

GATE = 0.99  # MLPerf's bar: 99% of the reference's ROUGE-1, ROUGE-2 and ROUGE-L
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


def gate(deltas: Sequence[PairedDelta | None], bar: float = GATE) -> str | None:
    """ "passed", "failed" or "inconclusive" against `bar` x the reference's score on every one of `deltas` (ROUGE-1,
    -2 and -L); None when one is missing or none has a ratio. A score the reference has at 0 has no ratio: 99% of 0
    is cleared by anything, so it cannot fail the mode."""
    if not deltas or any(d is None for d in deltas):
        return None
    ratios = [(d.ratio_low, d.ratio_high) for d in deltas if d and d.ratio_low is not None and d.ratio_high is not None]
    if not ratios:
        return None
    if any(high < bar for _, high in ratios):
        return "failed"
    if all(low >= bar for low, _ in ratios):
        return "passed"
    return "inconclusive"


def agreement(mode: Sequence[str], reference: Sequence[str]) -> float | None:
    """The share of documents whose greedy summary is the reference's, word for word (whitespace aside)."""
    pairs = list(zip(mode, reference, strict=True))
    if not pairs:
        return None
    return sum(" ".join(a.split()) == " ".join(b.split()) for a, b in pairs) / len(pairs)
