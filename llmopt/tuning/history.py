"""The tuner's history: one line per trial in history.jsonl, appended and flushed as each trial ends, so that a search
killed at any point keeps every finished trial, and `--resume` runs only what has no line yet.

A trial is one check of one thing: the estimate of a configuration, the drift of a quality mode, a configuration's
speed at one rung, a quality mode's gate, the winner's validation. Its line says what it found (`figures`) and, when
it rejects the configuration, which constraint bound it (`bound`: memory, tpot, drift, slo, gate, failed) and the
figure that did (`detail`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmopt.files import append_jsonl, read_jsonl
from llmopt.results import TUNE_HISTORY as HISTORY
from llmopt.results import TUNE_SUMMARY as SUMMARY

__all__ = ["HISTORY", "SUMMARY", "History", "Trial"]


@dataclass
class Trial:
    stage: str  # estimate, drift, speed, gate, validate
    key: str  # the configuration's key (speed, estimate, validate) or the quality mode's label (drift, gate)
    rung: int | None = None
    passed: bool = True  # False: this trial rejects the configuration (or the quality mode)
    bound: str | None = None  # the constraint that rejected it
    detail: str = ""  # the figure, in words
    figures: dict[str, Any] = field(default_factory=dict)
    folder: str | None = None  # where its results are, relative to the tune folder
    seconds: float | None = None  # how long the trial took
    ended: float = field(default_factory=time.time)

    @property
    def id(self) -> tuple[str, str, int | None]:
        return (self.stage, self.key, self.rung)


class History:
    def __init__(self, folder: Path) -> None:
        self.path = folder / HISTORY
        rows, _ = read_jsonl(self.path)  # a line a hard kill cut off is dropped: that trial runs again
        known = set(Trial.__dataclass_fields__)
        self.trials: dict[tuple[str, str, int | None], Trial] = {}
        for row in rows:
            trial = Trial(**{k: v for k, v in row.items() if k in known})
            self.trials[trial.id] = trial
        self.resumed = len(self.trials)

    def get(self, stage: str, key: str, rung: int | None = None) -> Trial | None:
        return self.trials.get((stage, key, rung))

    def add(self, trial: Trial) -> Trial:
        self.trials[trial.id] = trial
        append_jsonl(self.path, [asdict(trial)])
        return trial

    def of(self, stage: str) -> list[Trial]:
        return [t for t in self.trials.values() if t.stage == stage]
