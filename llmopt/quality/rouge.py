"""ROUGE the way Hugging Face evaluate's "rouge" computes it, with a reproducible bootstrap interval.

evaluate scores each pair with rouge-score (`RougeScorer(types, use_stemmer=False)`, default tokenizer:
lowercase, non-alphanumerics dropped), then reports the median of 1000 bootstrap resamples of the mean F1.
Its resampling is unseeded, so its figure moves by about 1e-4 between calls; here the seed is fixed, and the
plain mean is reported beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@dataclass(frozen=True)
class RougeAggregate:
    mid: float  # bootstrap median, what evaluate reports
    low: float
    high: float
    mean: float


def score_pair(prediction: str, reference: str) -> dict[str, float]:
    """F1 of each ROUGE type for one prediction against one reference."""
    return score_pairs([prediction], [reference])[0]


_scorer = None


def score_pairs(predictions: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    global _scorer
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    # rouge-score takes (target, prediction); F1 is symmetric, precision and recall are not.
    return [
        {k: v.fmeasure for k, v in _scorer.score(ref, pred).items()} for pred, ref in zip(predictions, references, strict=True)
    ]


def bootstrap(values: Sequence[float], resamples: int = 1000, confidence: float = 0.95, seed: int = 0) -> RougeAggregate:
    import numpy as np

    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no values to aggregate")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, mid, high = np.percentile(means, [tail, 50, 100 - tail])
    return RougeAggregate(mid=float(mid), low=float(low), high=float(high), mean=float(data.mean()))


def aggregate(per_doc: Sequence[dict[str, float]], seed: int = 0) -> dict[str, RougeAggregate]:
    return {k: bootstrap([d[k] for d in per_doc], seed=seed) for k in ROUGE_TYPES}
