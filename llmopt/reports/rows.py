"""The rows of a report: one per cell of a sweep's results folder, as the cell ended (its summary, or the sweep's
verdict), with the published row it reproduces."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError
from llmopt.reports.published import published_rows
from llmopt.runner.records import read_state
from llmopt.sweeps import experiment


def strategy_label(strategy: str) -> str:
    """A user's `path/to/file.py:Class` shows as `Class`."""
    return strategy.rpartition(":")[2] if ":" in strategy else strategy


@dataclass
class Row:
    cell: str
    strategy: str
    batch_size: int
    summary: dict[str, Any]
    published: dict[str, str] | None = None

    def get(self, key: str) -> Any:
        return self.summary.get(key)

    @property
    def baseline(self) -> bool:
        """A row with no model (`lead`): a quality floor, not a way to serve a model."""
        return self.get("model") == "none"

    @property
    def usable(self) -> bool:
        """A model row that produced summaries, so it can compete on speed and quality."""
        return (
            not self.baseline
            and self.get("status") in ("ok", "oom", "partial")
            and bool(self.get("docs_per_sec"))
            and self.get("rouge1") is not None
        )


def load_rows(root: Path) -> tuple[experiment.Experiment, list[Row]]:
    spec = root / "experiment.yaml"
    if not spec.is_file():
        raise UsageError(f"{str(root)!r} is not a sweep's results folder (no experiment.yaml)")
    exp = experiment.load(spec)
    rows = []
    for cell in exp.cells:
        state = read_state(root / cell.name)
        if state is None:
            state = {"status": "not run", "errors": []}
        rows.append(Row(cell.name, cell.strategy, cell.batch_size, state))
    match_published(rows, exp.reproduce)
    return exp, rows


def match_published(rows: list[Row], reproduce: dict[str, Any] | None) -> None:
    """The study's headline row of the same GPU, strategy and batch size, beside each of ours."""
    if not reproduce:
        return
    table = published_rows(reproduce["table"])
    gpu = reproduce.get("gpu")
    for row in rows:
        candidates = [
            p
            for p in table
            if (gpu is None or p["gpu"] == gpu) and p["strategy"] == row.strategy and p["batch_size"] == str(row.batch_size)
        ]
        headline = [p for p in candidates if p["headline"] == "yes"] or [p for p in candidates if p["n_docs"] == "100"]
        row.published = headline[0] if headline else None
