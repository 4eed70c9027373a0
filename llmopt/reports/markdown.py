"""report.md, summary.csv, plots/ and report.html for one or more results folders, optionally against a baseline."""

from __future__ import annotations

import io
from pathlib import Path

from llmopt.reports import html, quality, rows
from llmopt.reports.baseline import regression_cells, regression_table
from llmopt.reports.examples import examples_section
from llmopt.reports.plots import write_plots
from llmopt.reports.published import PUBLISHED
from llmopt.reports.recommend import pareto, recommendations
from llmopt.reports.rows import Row, Source
from llmopt.reports.tables import (
    failures_cells,
    failures_table,
    hardware_cells,
    hardware_note,
    hardware_table,
    main_cells,
    main_table,
    quality_cells,
    quality_table,
    unavailable_cells,
    unavailable_table,
    write_csv,
)

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
    "inconclusive). Drift columns come from `llmopt drift` where it ran for these results."
)


def _describe(source: Source) -> str:
    exp = source.experiment
    if exp is None:
        return f"- `{source.path}`: runs of `llmopt run`."
    what = f"Workload: {exp.workload} (prompt lengths, random token ids)" if exp.workload else f"Dataset: {exp.dataset}"
    repeats = f", {exp.repeats} timed loops per cell" if exp.repeats > 1 else ""
    return (f"- `{source.path}`: experiment **{exp.name}**, hardware {exp.hardware}. {what}. Weights: {exp.weights}. "
            f"Generation: {exp.generation or 'defaults'}{repeats}.")  # fmt: skip


def _front(all_rows: list[Row]) -> str:
    front = pareto(all_rows)
    return "Pareto front (no other cell both faster and better): " + (", ".join(r.cell for r in front) or "none") + "."


def _kwh(sources: list[Source], price_per_kwh: float | None) -> float | None:
    given = (s.experiment.price_per_kwh for s in sources if s.experiment and s.experiment.price_per_kwh)
    return price_per_kwh or next(given, None)


def html_sections(all_rows: list[Row], baseline: list[Row] | None) -> list[html.Section]:
    """report.md's tables, in its order, as the HTML page's sections: the same cells."""
    sections = [html.Section("Results", main_cells(all_rows), RESULTS_NOTE, "results")]
    if (by_type := hardware_cells(all_rows)) is not None:
        sections.append(html.Section("GPU types side by side", by_type, hardware_note(all_rows), "gpu-types"))
    if (compared := quality_cells(all_rows)) is not None:
        sections.append(html.Section("Quality against the reference", compared, QUALITY_NOTE, "quality"))
    if (failures := failures_cells(all_rows)) is not None:
        sections.append(html.Section("Failures", failures, anchor="failures"))
    if (absent := unavailable_cells(all_rows)) is not None:
        sections.append(html.Section("Not available on this machine", absent, anchor="unavailable"))
    if baseline is not None:
        against = regression_cells(all_rows, baseline)
        note = "" if against else "No cell of these results matches a cell of the baseline."
        sections.append(html.Section("Against the baseline", against or (["cell"], []), note, "baseline"))
    return sections


def render(all_rows: list[Row], sources: list[Source], plots: list[Path], baseline: list[Row] | None,
           price_per_kwh: float | None) -> str:  # fmt: skip
    out = io.StringIO()
    title = sources[0].name if len(sources) == 1 else f"{len(sources)} result sets"
    out.write(f"# {title}\n\n" + "\n".join(_describe(s) for s in sources) + "\n\n")
    for note in dict.fromkeys(r.get("model_note") for r in all_rows if r.get("model_note")):
        out.write(f"Model: {note}\n\n")
    out.write(SPEED_NOTE + "\n\n")
    out.write("## Results\n\n" + main_table(all_rows) + "\n\n")
    out.write(RESULTS_NOTE + "\n\n")
    by_type = hardware_table(all_rows)
    if by_type:
        out.write("## GPU types side by side\n\n" + by_type + "\n\n")
    for s in sources:
        if s.experiment is not None and s.experiment.reproduce:
            name, source = PUBLISHED[s.experiment.reproduce["table"]]
            out.write(f"Published figures: {source}; file `llmopt/data/published/{name}`.\n\n")
    compared = quality_table(all_rows)
    if compared:
        out.write("## Quality against the reference\n\n" + compared + "\n\n" + QUALITY_NOTE + "\n\n")
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
    out.write("## Quality against speed\n\n")
    out.write(_front(all_rows) + "\n\n")
    out.write("\n".join(recommendations(all_rows, _kwh(sources, price_per_kwh))) + "\n\n")
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
    suffix = plot_title(all_rows, sources)
    plots = write_plots(all_rows, suffix, folder / "plots")
    path = folder / "report.md"
    path.write_text(render(all_rows, sources, plots, base, price_per_kwh), encoding="utf-8")
    html.write_report(folder, all_rows, sources, html_sections(all_rows, base),
                      [_front(all_rows), *recommendations(all_rows, _kwh(sources, price_per_kwh))],
                      [_describe(s).removeprefix("- ") for s in sources], suffix)  # fmt: skip
    return path
