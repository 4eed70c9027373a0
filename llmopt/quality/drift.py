"""How far a loading mode's next-token distributions drift from a reference mode's, as llama.cpp judges its
quantizations (`perplexity --kl-divergence`): far more precise than ROUGE against human summaries.

The texts are the documents' prompts followed by the reference's own greedy summaries; every mode reads them
teacher-forced, and at each summary position its distribution is compared with the reference's:
- KL(reference || mode), its mean and 99th percentile over all positions;
- top-1 agreement: the share of positions where both pick the same token;
- perplexity of the reference's summaries under the mode.

The reference keeps its top REFERENCE_TOP_K tokens per position. The KL is summed over those tokens plus one bucket for
all others: coarse-graining a distribution never increases KL, so this is a lower bound of the full KL, tight when the
top tokens hold nearly all the mass, and exactly 0 for the reference against itself. Engines with full logits
(transformers, llama.cpp) give the mode's probability of every one of those tokens. vLLM lists only its own top tokens
(`max_logprobs`, 20 here): reference tokens it does not list go into the bucket, and the summary says how much
reference probability that was (`unlisted_mass`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llmopt.measure.stats import percentile

REFERENCE_TOP_K = 64


class Scored(Protocol):
    """What a mode said at one position of a given continuation, in natural-log probabilities (a strategy's
    `score_continuation` gives one per position; this module only reads them)."""

    actual: float  # the log-probability of the continuation's token at this position
    argmax: int  # the mode's own most likely token
    top: dict[int, float]  # its most likely tokens
    wanted: dict[int, float]  # the asked-for tokens it could give


@dataclass
class ReferenceDoc:
    id: str
    prompt: str | list[int]  # text, or token ids ready for the model
    continuation: list[int]  # the reference's own greedy summary, in tokens (its end-of-sequence token included)
    top_ids: list[list[int]] = field(default_factory=list)  # per position: the reference's most likely tokens
    top_logprobs: list[list[float]] = field(default_factory=list)
    argmax: list[int] = field(default_factory=list)


def reference_doc(doc_id: str, prompt: str | list[int], continuation: list[int], scores: Sequence[Scored]) -> ReferenceDoc:
    """The reference's distribution at every position of its own summary, its top tokens most likely first."""
    top = [sorted(s.top.items(), key=lambda kv: -kv[1]) for s in scores]
    return ReferenceDoc(
        doc_id, prompt, continuation, [[t for t, _ in row] for row in top], [[lp for _, lp in row] for row in top],
        [s.argmax for s in scores],
    )  # fmt: skip


def save_reference(path: Path, meta: dict[str, Any], docs: list[ReferenceDoc]) -> None:
    from llmopt.files import write_json_atomic

    # Full precision: the reference against itself must give exactly 0.
    write_json_atomic(path, {"meta": meta, "docs": [asdict(d) for d in docs]})


def load_reference(path: Path) -> tuple[dict[str, Any], list[ReferenceDoc]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return data["meta"], [ReferenceDoc(**d) for d in data["docs"]]


def position_kl(ref_ids: Sequence[int], ref_logprobs: Sequence[float], mode: dict[int, float]) -> tuple[float, float]:
    """KL(reference || mode) in nats over the partition {each of the reference's top tokens that the mode gives} +
    {every other token}, and the share of the reference's top-token mass the mode did not give (vLLM lists only its
    own top tokens). Coarse-graining never increases KL, so this is a lower bound of the full KL; identical
    distributions give exactly 0."""
    known = [(math.exp(lp), lp, mode[t]) for t, lp in zip(ref_ids, ref_logprobs, strict=True) if t in mode]
    top_mass = sum(math.exp(lp) for lp in ref_logprobs)
    kl = sum(p * (lp - lq) for p, lp, lq in known)
    p_rest = max(0.0, 1.0 - sum(p for p, _, _ in known))
    q_rest = max(1e-12, 1.0 - sum(math.exp(lq) for _, _, lq in known))
    if p_rest > 1e-12:
        kl += p_rest * math.log(p_rest / q_rest)
    missing = top_mass - sum(p for p, _, _ in known)
    return max(kl, 0.0), missing


@dataclass
class ModeDrift:
    strategy: str
    model: str
    kl_mean: float | None
    kl_p99: float | None
    top1_agreement: float | None
    perplexity: float | None
    positions: int
    documents: int
    unlisted_mass: float  # mean reference probability of its top tokens the mode's engine did not list (vLLM)
    kl_method: str


def mode_drift(label: str, model: str, reference: list[ReferenceDoc], scores: Sequence[Sequence[Scored]],
               listed: int | None) -> ModeDrift:  # fmt: skip
    """A mode's drift from the reference, from its scores at every position of the reference's summaries
    (`scores[d][i]`: document d, position i). `listed`: how many of its top tokens the mode's engine lists per
    position, None where it gives full logits."""
    kls: list[float] = []
    agree = positions = 0
    nll = unlisted = 0.0
    for doc, doc_scores in zip(reference, scores, strict=True):
        for i, score in enumerate(doc_scores):
            kl, missing = position_kl(doc.top_ids[i], doc.top_logprobs[i], score.wanted)
            kls.append(kl)
            unlisted += missing
            agree += score.argmax == doc.argmax[i]
            nll -= score.actual
            positions += 1
    method = (
        f"KL over the reference's top {REFERENCE_TOP_K} tokens and one bucket for the rest (a lower bound); "
        + ("the mode's probabilities from full logits" if listed is None else
           f"the mode lists its top {listed} tokens: the reference's others join the rest bucket")
    )  # fmt: skip
    return ModeDrift(
        strategy=label,
        model=model,
        kl_mean=sum(kls) / len(kls) if kls else None,
        kl_p99=percentile(kls, 99),
        top1_agreement=agree / positions if positions else None,
        perplexity=math.exp(nll / positions) if positions else None,
        positions=positions,
        documents=len(reference),
        unlisted_mass=unlisted / positions if positions else 0.0,
        kl_method=method,
    )
