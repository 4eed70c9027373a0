"""ROUGE as evaluate's "rouge" computes it: the same per-pair F1, the same bootstrap-median aggregate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_jsonl
from rouge_score import rouge_scorer, scoring

from llmopt.documents.datasets import load_dataset
from llmopt.quality import rouge as ours
from llmopt.strategies.baseline import lead_sentences


def real_pairs() -> tuple[list[str], list[str]]:
    """Lead-2 summaries of the bundled articles against their hand-written references."""
    docs = load_dataset("sample")
    return [lead_sentences(d.document, 2) for d in docs], [d.summary for d in docs]


def evaluate_style(predictions: list[str], references: list[str], seed: int) -> dict[str, float]:
    """evaluate's rouge, step by step: RougeScorer without stemmer, score(reference, prediction), BootstrapAggregator mid."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    aggregator = scoring.BootstrapAggregator()
    for ref, pred in zip(references, predictions, strict=True):
        aggregator.add_scores(scorer.score(ref, pred))
    np.random.seed(seed)
    return {k: v.mid.fmeasure for k, v in aggregator.aggregate().items()}


def test_per_pair_f1_matches_rouge_score_exactly():
    predictions, references = real_pairs()
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    for mine, pred, ref in zip(ours.score_pairs(predictions, references), predictions, references, strict=True):
        theirs = scorer.score(ref, pred)
        for kind in ("rouge1", "rouge2", "rougeL"):
            assert mine[kind] == theirs[kind].fmeasure


def test_aggregate_matches_evaluates_bootstrap_within_its_own_resampling_noise():
    predictions, references = real_pairs()
    mine = ours.aggregate(ours.score_pairs(predictions, references))
    theirs = [evaluate_style(predictions, references, seed) for seed in range(3)]
    for kind in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        spread = max(t[kind] for t in theirs) - min(t[kind] for t in theirs)
        for t in theirs:
            # Both are medians of 1000 bootstrap means; they differ only by resampling noise (about 1e-3 at n=22).
            assert mine[kind].mid == pytest.approx(t[kind], abs=max(0.004, 2 * spread))
        assert mine[kind].low < mine[kind].mean < mine[kind].high


def test_known_values():
    assert ours.score_pair("hello there", "hello there")["rouge1"] == 1.0
    assert ours.score_pair("general kenobi", "hello there")["rouge1"] == 0.0
    # Two of three words shared both ways: P = R = F1 = 2/3; case and punctuation are ignored.
    assert ours.score_pair("The cat sat.", "the cat ran")["rouge1"] == pytest.approx(2 / 3)


def test_bootstrap_interval_is_seeded_and_sane():
    values = [0.1, 0.2, 0.3, 0.4, 0.5] * 4
    a, b = ours.bootstrap(values, seed=1), ours.bootstrap(values, seed=1)
    assert a == b
    assert a.mean == pytest.approx(0.3) and a.low < 0.3 < a.high


def test_score_command_prints_json(tmp_path: Path):
    predictions, references = real_pairs()
    rows = [{"prediction": p, "reference": r} for p, r in zip(predictions, references, strict=True)]
    rows.append({"prediction": None, "reference": "a skipped document"})
    result = run_cli("llmopt.score", "--predictions", write_jsonl(tmp_path / "p.jsonl", rows))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    expected = ours.aggregate(ours.score_pairs(predictions, references))
    assert out["n"] == len(predictions) and out["n_unscored"] == 1
    assert out["rouge1"] == pytest.approx(expected["rouge1"].mid, abs=1e-6)
    assert out["rouge1_ci95"][0] < out["rouge1"] < out["rouge1_ci95"][1]
    assert set(out) >= {"rouge2", "rougeL", "rougeLsum", "rouge2_ci95"}
