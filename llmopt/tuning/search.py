"""How the speed stage spends its time: successive halving, or the exhaustive grid it is measured against.

Successive halving (Jamieson and Talwalkar, 2016; the rule behind Hyperband) runs every configuration on a small
budget (few documents, or short load levels and a coarse search), keeps the best 1/eta of them, and runs those again
on a larger budget, until the last rung, whose figures are the ones the tuner decides on. A configuration within the
noise of the last one promoted is promoted too, so that a coin flip of the measurement never decides a cut. The grid
runs every configuration at the last rung's budget. docs/tune.md compares the two on the CPU demo's space.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from llmopt.tuning.history import Trial
from llmopt.tuning.space import Config


@dataclass(frozen=True)
class Rung:
    index: int
    budget: dict[str, Any]  # what a trial gets at this rung: documents, or requests per level and search tolerance


RunRung = Callable[[Rung, list[Config]], dict[str, Trial]]  # the rung's trials by configuration key


def promoted(configs: Sequence[Config], trials: dict[str, Trial], score: Callable[[Trial], float | None], eta: int,
             keep_at_least: int, noise: float) -> list[Config]:  # fmt: skip
    """The configurations that go on to the next rung: the best ceil(n/eta) (at least `keep_at_least`) by `score`
    (higher is better), and any within `noise` (a fraction) of the last of them. Rejected ones never go on."""
    alive = [c for c in configs if trials[c.key].passed and score(trials[c.key]) is not None]
    ranked = sorted(alive, key=lambda c: -(score(trials[c.key]) or 0.0))
    n = min(len(ranked), max(keep_at_least, math.ceil(len(configs) / eta)))
    if n == 0:
        return []
    cut = score(trials[ranked[n - 1].key]) or 0.0
    return [c for k, c in enumerate(ranked) if k < n or (score(trials[c.key]) or 0.0) >= cut * (1 - noise)]


def successive_halving(configs: list[Config], rungs: Sequence[Rung], run: RunRung, score: Callable[[Trial], float | None],
                       eta: int = 3, keep_at_least: int = 2, noise: float = 0.05,
                       say: Callable[[str], None] = lambda _: None) -> dict[str, Trial]:  # fmt: skip
    """Every configuration's last trial (the rung it reached), by key."""
    last: dict[str, Trial] = {}
    alive = list(configs)
    for k, rung in enumerate(rungs):
        trials = run(rung, alive)
        last.update(trials)
        if k == len(rungs) - 1 or not alive:
            break
        nxt = promoted(alive, trials, score, eta, keep_at_least, noise)
        dropped = [c.key for c in alive if c not in nxt and trials[c.key].passed]
        if dropped:
            say(f"rung {rung.index}: {len(nxt)} of {len(alive)} go on; behind: {', '.join(dropped)}")
        alive = nxt
    return last


def grid(configs: list[Config], rungs: Sequence[Rung], run: RunRung) -> dict[str, Trial]:
    """Every configuration at the last rung's budget: what successive halving must agree with."""
    return run(rungs[-1], list(configs))
