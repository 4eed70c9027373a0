"""What a report says, whichever writer lays it out: its rows and sources, the prose under its tables, the line that
describes each source, the Pareto front and the recommendations. report.md (markdown.py) and report.html (html.py)
are two writers of one `Report`; build.py makes it from result folders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmopt.reports.recommend import pareto, recommendations
from llmopt.reports.rows import Row, Source

SPEED_NOTE = (
    "docs/s = completed documents / generation time (load and warm-up excluded); with repeated timed loops, their "
    "median, and their range in brackets. Definitions: docs/metrics.md."
)
RESULTS_NOTE = (
    "% roofline: docs/s as a share of the least time this GPU could take for the same tokens at the same batch "
    "size (`llmopt roofline`; the model is in docs/roofline.md). Blank where the device is not in the GPU table. "
    "J/doc: energy over the document loop per document (NVML on a GPU, RAPL on a CPU where readable)."
)
QUALITY_NOTE = (
    "Document by document against the reference cell of the same results: ROUGE differences with paired "
    "bootstrap 95% intervals (the same documents resampled together), the share of documents whose summary "
    "is the reference's word for word, and MLPerf's gate: ROUGE-1, -2 and -L each at least 99% of the "
    "reference's (passed when every ratio's whole interval is above, failed when one is below, else "
    "inconclusive)."
)
DRIFT_NOTE = (
    "A drift figure (KL, top-1 agreement, perplexity) stands in the row whose mode, model, dtype and GGUF type the "
    'drift run measured, teacher-forced one document at a time; "drift of" says which, or why the figures are blank. '
    "It stands for any batch size: a batch's padding changes which 16-bit roundings happen, not how large they are "
    "(docs/quality.md)."
)


@dataclass
class Report:
    """One report's contents: the rows of its sources (quality attached), an optional baseline's rows, and what the
    conductor wrote or had to leave out on this machine."""

    rows: list[Row]
    sources: list[Source]
    baseline: list[Row] | None = None
    price_per_kwh: float | None = None
    plots: list[Path] = field(default_factory=list)  # the PNG plots written, for report.md
    left_out: list[str] = field(default_factory=list)  # what this machine could not write, and how to get it

    @property
    def title(self) -> str:
        return self.sources[0].name if len(self.sources) == 1 else f"{len(self.sources)} result sets"

    def descriptions(self) -> list[str]:
        return [describe(s) for s in self.sources]

    def model_notes(self) -> list[str]:
        """Each packaged model's note once, naming the cells it describes where it does not describe them all (an
        AWQ packing of the weights is one cell's model, not every cell's)."""
        by_note: dict[str, list[str]] = {}
        for r in self.rows:
            if r.get("model_note"):
                by_note.setdefault(r.get("model_note"), []).append(r.cell)
        # The cells whose run says which model it ran (a summary always holds model_note, None for a model not
        # packaged); a cell that failed before its summary, or was not run, is no exception to any note.
        with_model = [r.cell for r in self.rows if not r.baseline and "model_note" in r.summary]
        lines = []
        for note, cells in by_note.items():
            others = [c for c in with_model if c not in cells]
            if not others:
                lines.append(f"Model: {note}")
            elif len(cells) <= len(others):
                lines.append(f"Model of {', '.join(cells)}: {note}")
            else:
                lines.append(f"Model (every cell but {', '.join(others)}): {note}")
        return lines

    def quality_note(self) -> str:
        """The quality table's note: how rows are compared, and where drift was measured, against what."""
        runs = {str(run.path): run for r in self.rows if (run := r.quality.get("drift_run")) is not None}
        if not runs:
            return QUALITY_NOTE + " No drift measured for these results (`llmopt drift`, or an experiment's `drift:`)."
        return " ".join([QUALITY_NOTE, *(f"Drift: {run.describe()}." for run in runs.values()), DRIFT_NOTE])

    def front(self) -> str:
        front = pareto(self.rows)
        return "Pareto front (no other cell both faster and better): " + (", ".join(r.cell for r in front) or "none") + "."

    def recommendations(self) -> list[str]:
        return recommendations(self.rows, self.kwh_price)

    @property
    def kwh_price(self) -> float | None:
        given = (s.experiment.price_per_kwh for s in self.sources if s.experiment and s.experiment.price_per_kwh)
        return self.price_per_kwh or next(given, None)


def describe(source: Source) -> str:
    """One line on where a source's rows come from: the experiment, its hardware, dataset, weights and generation."""
    exp = source.experiment
    if exp is None:
        return f"`{source.path}`: runs of `llmopt run`."
    what = f"Workload: {exp.workload} (prompt lengths, random token ids)" if exp.workload else f"Dataset: {exp.dataset}"
    repeats = f", {exp.repeats} timed loops per cell" if exp.repeats > 1 else ""
    return (f"`{source.path}`: experiment **{exp.name}**, hardware {exp.hardware}. {what}. Weights: {exp.weights}. "
            f"Generation: {exp.generation or 'defaults'}{repeats}.")  # fmt: skip


def plot_title(all_rows: list[Row], sources: list[Source]) -> str:
    """The line under every plot's title: the model(s), the hardware and the dataset, and the experiment."""

    def listed(values: list[str], none: str) -> str:
        kept = list(dict.fromkeys(v for v in values if v))
        return ", ".join(kept[:3]) + (f" +{len(kept) - 3}" if len(kept) > 3 else "") if kept else none

    models = listed([r.get("model") for r in all_rows if r.get("model") not in (None, "none")], "no model")
    hardware = listed(sorted({r.hardware for r in all_rows if r.get("device")}), "no run finished")
    datasets = listed([r.get("dataset") for r in all_rows], "no dataset")
    where = sources[0].name if len(sources) == 1 else f"{len(sources)} result sets"
    return f"{models} on {hardware}, dataset {datasets} ({where})"
