"""What a tuning run was asked: the model and its workload, the objective and its constraints. Every stage reads it;
tune.json records it, and `--resume` refuses to continue a search that was asked something else."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Settings:
    model: str
    objective: str  # online (served, under the SLO) or offline (docs/s)
    optimize: str  # cost, throughput or memory
    dataset: str
    prompt: str
    max_new_tokens: int
    slo: str | None  # online: ttft=2s,tpot=150ms
    gate: float  # the paired ROUGE gate's bar: a share of the reference's ROUGE (0.99)
    max_kl: float  # the drift screen: a quality mode whose mean KL is above this is dropped
    min_top1: float  # ... or whose top-1 agreement is below this
    price_per_hour: float | None
    reference: str  # the quality reference's loading mode
    reference_dtype: str  # its dtype
    api: str  # completions or chat (online)
    search: str  # halving or grid
    eta: int
    confidence: float  # a level passes when its SLO holds at this confidence (the upper bound), online
    drift_docs: int
    drift_tokens: int
    gate_docs: int | None  # None: every document of the dataset
    finalists: int
    search_max: int  # the most concurrent users a search tries
    rung_requests: tuple[int, ...]  # online: measured requests per level at each rung
    rung_docs: tuple[int, ...]  # offline: documents at each rung
    trial_timeout_s: int
    quality_floor: float  # quality-aware goodput: an answer's ROUGE-L against the reference's answer at least this
    seed: int  # the search's seed; the validation draws a fresh one

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differs(self, other: dict[str, Any]) -> list[str]:
        """What a resumed search was asked differently (the seed and the search's own knobs may change)."""
        free = {"seed", "search", "eta", "finalists", "trial_timeout_s"}
        mine = self.as_dict()
        return [k for k in mine if k not in free and k in other and _norm(other[k]) != _norm(mine[k])]


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def enough_requests(slo: str | None, confidence: float, given: tuple[int, ...]) -> tuple[tuple[int, ...], str | None]:
    """The rungs' requests per level with the last raised where it could not bound the SLO's percentiles at this
    confidence (the fewest requests whose largest answer bounds p95 at 90% is 45: 1 - 0.95^45 >= 0.9), and what was
    raised, to say."""
    from llmopt.measure.stats import samples_to_bound
    from llmopt.serving.stats import parse_slo

    if not slo or not confidence:
        return given, None
    percentiles = parse_slo(slo).percentiles
    need = max(samples_to_bound(q, confidence) for q in percentiles.values())
    if given[-1] >= need:
        return given, None
    worst = max(percentiles, key=lambda name: percentiles[name])
    note = (
        f"the last rung sends {need} requests a level, not {given[-1]}: the fewest whose answers bound "
        f"{worst} p{percentiles[worst]:g} at {confidence:.0%} confidence (--confidence 0 judges the point estimate)"
    )
    return (*[min(n, need) for n in given[:-1]], need), note
