"""The settings of a run: what `--resume` checks, and what the summary repeats."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RunConfig:
    strategy: str
    model: str
    dataset: str
    prompt: str = "published-hf"
    batch_size: int | str = 1  # or "auto": the largest batch that fits, found before the timed loop
    max_new_tokens: int = 300
    sampling: str = "greedy"  # a preset of llmopt.strategies.base.SAMPLING_PRESETS
    seed: int | None = None
    ignore_eos: bool = False
    limit: int | None = None
    warmup: bool = True
    repeats: int = 1  # the timed loop this many times after one load; docs/s is their median
    options: dict[str, Any] = field(default_factory=dict)  # dtype, bnb_4bit_type, trust_remote_code

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the original; --limit may grow, --repeats may change."""
        data = asdict(self)
        del data["limit"], data["warmup"], data["repeats"]
        return data
