"""The rows of a report, read from any results folders: a sweep's (its experiment and its cells), a folder of plain
`llmopt run` runs, a single run, or several of these from different machines. Each row is one run as it ended (its
summary, or the sweep's verdict), with its folder, the source it came from and the hardware it ran on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError
from llmopt.reports.published import published_rows
from llmopt.results import PRODUCED, completed_records, is_run, state_or_not_run
from llmopt.sweeps import experiment

EXPERIMENT = "experiment.yaml"


def strategy_label(strategy: str) -> str:
    """A user's `path/to/file.py:Class` shows as `Class`."""
    return strategy.rpartition(":")[2] if ":" in strategy else strategy


@dataclass
class Source:
    """One results folder given to the report: a sweep (with its experiment) or a set of plain runs."""

    path: Path
    experiment: experiment.Experiment | None = None

    @property
    def name(self) -> str:
        return self.experiment.name if self.experiment else self.path.name


@dataclass
class Row:
    cell: str
    strategy: str
    batch_size: int | str | None
    summary: dict[str, Any]
    folder: Path
    source: Source = field(default_factory=lambda: Source(Path(".")))
    published: dict[str, str] | None = None
    quality: dict[str, Any] = field(default_factory=dict)  # against the reference row: deltas, agreement, gate, drift
    hardware_type: str | None = None  # the GPU type the experiment gave this cell (several types: one cell each)

    def get(self, key: str) -> Any:
        return self.summary.get(key)

    def completed_records(self) -> dict[str, dict[str, Any]]:
        """The run's completed documents by id: predictions and per-document ROUGE, for paired comparisons."""
        return completed_records(self.folder)

    @property
    def hardware(self) -> str:
        """What the run measured itself on; the experiment's label where the run left no summary."""
        exp = self.source.experiment
        return self.get("device") or self.hardware_type or (exp.hardware if exp else "unknown")

    @property
    def price_per_hour(self) -> float | None:
        """USD per hour of what the row held: a per-type price is per GPU, so times the GPUs the cell held; a single
        `price_per_hour` is the whole machine's."""
        exp = self.source.experiment
        if exp is None:
            return None
        price = exp.price_for(self.hardware_type)
        if price is None or self.hardware_type not in exp.prices:
            return price
        cell = next((c for c in exp.cells if c.name == self.folder.name), None)
        return price * (cell.gpu_count if cell else 1)

    @property
    def baseline(self) -> bool:
        """A row with no model (`lead`): a quality floor, not a way to serve a model."""
        return self.get("model") == "none"

    @property
    def usable(self) -> bool:
        """A model row that produced summaries, so it can compete on speed and quality."""
        return (
            not self.baseline
            and self.get("status") in PRODUCED
            and bool(self.get("docs_per_sec"))
            and self.get("rouge1") is not None
        )


def sources(paths: list[Path]) -> list[Source]:
    """The sources in `paths`: a sweep folder, a run folder, or a folder holding runs or sweeps (one level down)."""
    found: list[Source] = []
    for path in paths:
        if not path.is_dir():
            raise UsageError(f"{str(path)!r} is not a results folder")
        if (path / EXPERIMENT).is_file() or is_run(path):
            found.append(Source(path, experiment.load(path / EXPERIMENT) if (path / EXPERIMENT).is_file() else None))
            continue
        sweeps = [p for p in sorted(path.iterdir()) if (p / EXPERIMENT).is_file()]
        runs = [p for p in sorted(path.iterdir()) if p.is_dir() and is_run(p)]
        found += [Source(p, experiment.load(p / EXPERIMENT)) for p in sweeps]
        if runs:
            found.append(Source(path))
        if not sweeps and not runs:
            raise UsageError(f"{str(path)!r} holds no llmopt results (no sweep, no run with a summary.json)")
    return found


def load(paths: list[Path]) -> list[Row]:
    rows: list[Row] = []
    for source in sources(paths):
        exp = source.experiment
        if exp is not None:
            for cell in exp.cells:
                state = state_or_not_run(source.path / cell.name)
                rows.append(Row(cell.name, cell.strategy, cell.batch_size, state, source.path / cell.name, source,
                                hardware_type=cell.hardware))  # fmt: skip
            match_published([r for r in rows if r.source is source], exp.reproduce)
            continue
        folders = [source.path] if is_run(source.path) else [p for p in sorted(source.path.iterdir()) if is_run(p)]
        for folder in folders:
            state = state_or_not_run(folder)
            batch = state.get("batch_size_requested", state.get("batch_size"))
            rows.append(Row(folder.name, state.get("strategy", "?"), batch, state, folder, source))
    if len({r.source.name for r in rows}) > 1:  # several sources: say where each row came from
        for r in rows:
            r.cell = f"{r.source.name}/{r.cell}"
    return rows


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
