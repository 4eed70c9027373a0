"""A mode run teacher-forced over the reference's texts, for `llmopt drift`: the reference's greedy summaries and its
distributions at every position of them, then each mode's distributions at the same positions. The arithmetic that
compares them (KL, top-1 agreement, perplexity) is llmopt/quality/drift.py, which never runs a strategy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from llmopt.quality.drift import REFERENCE_TOP_K, ModeDrift, ReferenceDoc, mode_drift, reference_doc
from llmopt.strategies.base import GenerationParams, PositionScore, Prompt, Strategy


def build_reference(strategy: Strategy, prompts: Sequence[tuple[str, Prompt]], max_new_tokens: int,
                    progress: Callable[[int], None] = lambda n: None) -> list[ReferenceDoc]:  # fmt: skip
    """The reference's greedy summaries, then its distribution at every position of them."""
    docs = []
    for doc_id, prompt in prompts:
        (generation,) = strategy.generate_batch([prompt], GenerationParams(max_new_tokens=max_new_tokens))
        continuation = list(generation.token_ids or [])
        if not continuation:
            continue
        scores = strategy.score_continuation(prompt, continuation, None, REFERENCE_TOP_K)
        docs.append(reference_doc(doc_id, prompt, continuation, scores))
        progress(1)
    return docs


def measure(strategy: Strategy, label: str, model: str, reference: list[ReferenceDoc],
            progress: Callable[[int], None] = lambda n: None) -> ModeDrift:  # fmt: skip
    """The mode's distributions at every position of the reference's summaries, and its drift from the reference."""
    scores: list[list[PositionScore]] = []
    for doc in reference:
        scores.append(strategy.score_continuation(doc.prompt, doc.continuation, doc.top_ids, REFERENCE_TOP_K))
        progress(1)
    return mode_drift(label, model, reference, scores, strategy.max_scored_tokens)
