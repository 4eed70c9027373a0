"""From measured configurations to one answer: what each costs, which is cheapest among those that meet every
constraint, which are within the noise of it (a tie goes to the simpler one), and the Pareto fronts of cost against
quality and against latency.

Cost is the price per hour over the throughput at the SLO: USD per million output tokens online (the tokens/s of
the heaviest load that met the SLO), per 100 documents offline (docs/s at the configuration's batch). Without a price
the order is the same (a fixed price over throughput), and the cost column stays blank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmopt.tuning.space import Config


@dataclass
class Point:
    """A configuration with everything the search learned of it."""

    config: Config
    throughput: float | None = None  # output tokens/s at the SLO (online) or docs/s (offline)
    memory_bytes: int | None = None  # measured peak
    latency_s: float | None = None  # online: p95 TTFT at the heaviest passing load; offline: seconds per document
    kl_mean: float | None = None  # drift of its quality mode against the reference
    top1: float | None = None
    gate: str | None = None  # passed, failed, inconclusive (the paired ROUGE gate, finalists only)
    quality_decided_by: str | None = None  # "gate" or "drift"
    rejected: str | None = None  # the constraint that bound it: memory, tpot, drift, slo, gate, failed
    detail: str = ""  # the figure that rejected it
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.config.key


def cost(throughput: float | None, price_per_hour: float | None, objective: str) -> float | None:
    """USD per 1M output tokens (online, throughput in tokens/s) or per 100 documents (offline, docs/s)."""
    if not throughput or price_per_hour is None:
        return None
    per = 1e6 if objective == "online" else 100
    return price_per_hour * per / (throughput * 3600)


def cost_unit(objective: str) -> str:
    return "USD per 1M output tokens" if objective == "online" else "USD per 100 documents"


def rank_key(point: Point, optimize: str) -> float:
    """Smaller is better: the cost (or 1/throughput, the same order at any price), or the memory."""
    if optimize == "memory":
        return float(point.memory_bytes) if point.memory_bytes is not None else float("inf")
    return 1.0 / point.throughput if point.throughput else float("inf")


def simplicity(point: Point) -> tuple[int, int]:
    return (point.config.engine_spec().simplicity, point.config.changed)


def winner(points: Sequence[Point], optimize: str, noise: float) -> tuple[Point | None, list[Point]]:
    """The best configuration that meets every constraint, and the ones tied with it: within `noise` (a fraction)
    of the best figure. Among the tied, the simplest engine and the fewest changed knobs win."""
    alive = [p for p in points if p.rejected is None and rank_key(p, optimize) != float("inf")]
    if not alive:
        return None, []
    best = min(rank_key(p, optimize) for p in alive)
    tied = [p for p in alive if rank_key(p, optimize) <= best * (1 + noise)]
    tied.sort(key=lambda p: (*simplicity(p), rank_key(p, optimize)))
    return tied[0], tied[1:]


def pareto(points: Sequence[Point], x: str, y: str, optimize: str = "cost") -> list[Point]:
    """The points no other point beats on both `x` ("cost") and `y` ("kl" or "latency"), smaller being better on
    both; a point without the figure is left out."""

    def value(p: Point, axis: str) -> float | None:
        if axis == "cost":
            return rank_key(p, optimize) if p.throughput else None
        return p.kl_mean if axis == "kl" else p.latency_s

    have = [(p, value(p, x), value(p, y)) for p in points if p.rejected in (None, "gate", "drift")]
    have = [(p, a, b) for p, a, b in have if a is not None and b is not None]
    front = [
        p for p, a, b in have
        if not any(a2 <= a and b2 <= b and (a2 < a or b2 < b) for _, a2, b2 in have)
    ]  # fmt: skip
    return sorted(front, key=lambda p: rank_key(p, optimize))


def closest_miss(points: Sequence[Point]) -> Point | None:
    """Where nothing met the SLO: the configuration that came nearest (the smallest worst overshoot of an
    objective at concurrency 1), to say by how much it missed."""
    missed = [p for p in points if p.rejected == "slo" and p.figures.get("overshoot") is not None]
    return min(missed, key=lambda p: p.figures["overshoot"], default=None)
