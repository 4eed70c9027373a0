"""report.md, summary.csv and plots/ for one or more results folders, optionally against a baseline."""

from __future__ import annotations

import io
from pathlib import Path

from llmopt.reports import quality, rows
from llmopt.reports.baseline import regression_table
from llmopt.reports.examples import examples_section
from llmopt.reports.plots import write_plots
from llmopt.reports.published import PUBLISHED
from llmopt.reports.recommend import pareto, recommendations
from llmopt.reports.rows import Row, Source
from llmopt.reports.tables import (
    failures_table,
    hardware_table,
    main_table,
    quality_table,
    unavailable_table,
    write_csv,
)


def _describe(source: Source) -> str:
    exp = source.experiment
    if exp is None:
        return f"- `{source.path}`: runs of `llmopt run`."
    what = f"Workload: {exp.workload} (prompt lengths, random token ids)" if exp.workload else f"Dataset: {exp.dataset}"
    repeats = f", {exp.repeats} timed loops per cell" if exp.repeats > 1 else ""
    return (f"- `{source.path}`: experiment **{exp.name}**, hardware {exp.hardware}. {what}. Weights: {exp.weights}. "
            f"Generation: {exp.generation or 'defaults'}{repeats}.")  # fmt: skip


def render(all_rows: list[Row], sources: list[Source], plots: list[Path], baseline: list[Row] | None,
           price_per_kwh: float | None) -> str:  # fmt: skip
    out = io.StringIO()
    title = sources[0].name if len(sources) == 1 else f"{len(sources)} result sets"
    out.write(f"# {title}\n\n" + "\n".join(_describe(s) for s in sources) + "\n\n")
    for note in dict.fromkeys(r.get("model_note") for r in all_rows if r.get("model_note")):
        out.write(f"Model: {note}\n\n")
    out.write(
        "docs/s = completed documents / generation time (load and warm-up excluded); with repeated timed loops, their "
        "median, and their range in brackets. See the README's metric definitions.\n\n"
    )
    out.write("## Results\n\n" + main_table(all_rows) + "\n\n")
    out.write(
        "% roofline: docs/s as a share of the least time this GPU could take for the same tokens at the same batch "
        "size (`llmopt roofline`; the model is in the README). Blank where the device is not in the GPU table. "
        "J/doc: energy over the document loop per document (NVML on a GPU, RAPL on a CPU where readable).\n\n"
    )
    by_type = hardware_table(all_rows)
    if by_type:
        out.write("## GPU types side by side\n\n" + by_type + "\n\n")
    for s in sources:
        if s.experiment is not None and s.experiment.reproduce:
            name, source = PUBLISHED[s.experiment.reproduce["table"]]
            out.write(f"Published figures: {source}; file `llmopt/data/published/{name}`.\n\n")
    compared = quality_table(all_rows)
    if compared:
        out.write("## Quality against the reference\n\n" + compared + "\n\n")
        out.write(
            "Document by document against the reference cell of the same results: ROUGE differences with paired "
            "bootstrap 95% intervals (the same documents resampled together), the share of documents whose summary "
            "is the reference's word for word, and MLPerf's gate: ROUGE-1, -2 and -L each at least 99% of the "
            "reference's (passed when every ratio's whole interval is above, failed when one is below, else "
            "inconclusive). Drift "
            "columns come from `llmopt drift` where it ran for these results.\n\n"
        )
    wrote = examples_section(all_rows)
    if wrote:
        out.write("## What the modes wrote\n\nThe first documents: the human reference summary and each cell's.\n\n")
        out.write(wrote + "\n\n")
    out.write("## Failures\n\n" + failures_table(all_rows) + "\n\n")
    absent = unavailable_table(all_rows)
    if absent:
        out.write("## Not available on this machine\n\n" + absent + "\n\n")
    if baseline is not None:
        out.write("## Against the baseline\n\n" + regression_table(all_rows, baseline) + "\n\n")
    front = pareto(all_rows)
    out.write("## Quality against speed\n\n")
    out.write("Pareto front (no other cell both faster and better): " + (", ".join(r.cell for r in front) or "none") + ".\n\n")
    kwh = price_per_kwh or next(
        (s.experiment.price_per_kwh for s in sources if s.experiment and s.experiment.price_per_kwh), None
    )
    out.write("\n".join(recommendations(all_rows, kwh)) + "\n\n")
    failed = [r for r in all_rows if r.get("stderr_tail")]
    if failed:
        out.write("## Last lines of failed cells\n\n")
        for r in failed:
            out.write(f"### {r.cell}\n\n```\n{r.get('stderr_tail')}\n```\n\n")
    if plots:
        out.write("## Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n")
    return out.getvalue()


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


def write(paths: list[Path], out: Path | None = None, baseline: list[Path] | None = None,
          price_per_kwh: float | None = None) -> Path:  # fmt: skip
    """Write report.md, summary.csv and plots/ for `paths` into `out` (default: the one folder given)."""
    sources = rows.sources(paths)
    all_rows = rows.load(paths)
    quality.attach(all_rows)
    base = None
    if baseline:
        base = rows.load(baseline)
        quality.attach(base)
    folder = out or paths[0]
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(all_rows, folder / "summary.csv")
    plots = write_plots(all_rows, plot_title(all_rows, sources), folder / "plots")
    path = folder / "report.md"
    path.write_text(render(all_rows, sources, plots, base, price_per_kwh), encoding="utf-8")
    return path
