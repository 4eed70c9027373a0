"""report.md, summary.csv and plots/ for a sweep's results folder."""

from __future__ import annotations

import io
from pathlib import Path

from llmopt.reports.plots import write_plots
from llmopt.reports.published import PUBLISHED
from llmopt.reports.recommend import pareto, recommendations
from llmopt.reports.rows import Row, load_rows
from llmopt.reports.tables import failures_table, main_table, unavailable_table, write_csv
from llmopt.sweeps import experiment


def render(exp: experiment.Experiment, rows: list[Row], plots: list[Path]) -> str:
    out = io.StringIO()
    source = f"Workload: {exp.workload} (prompt lengths, random token ids)" if exp.workload else f"Dataset: {exp.dataset}"
    out.write(f"# {exp.name}\n\nHardware: {exp.hardware}. {source}. Weights: {exp.weights}. ")
    out.write(f"Generation: {exp.generation or 'defaults'}.\n")
    out.write(
        "docs/s = completed documents / generation time (load and warm-up excluded); see the README's metric definitions.\n\n"
    )
    out.write("## Results\n\n" + main_table(exp, rows) + "\n\n")
    out.write(
        "% roofline: docs/s as a share of the least time this GPU could take for the same tokens at the same batch "
        "size (`python -m llmopt.roofline`; the model is in the README). Blank where the device is not in the GPU table.\n\n"
    )
    if exp.reproduce:
        name, source = PUBLISHED[exp.reproduce["table"]]
        out.write(f"Published figures: {source}; file `results/published/{name}`.\n\n")
    out.write("## Failures\n\n" + failures_table(exp, rows) + "\n\n")
    absent = unavailable_table(rows)
    if absent:
        out.write("## Not available on this machine\n\n" + absent + "\n\n")
    front = pareto(rows)
    out.write("## Quality against speed\n\n")
    out.write("Pareto front (no other cell both faster and better): " + (", ".join(r.cell for r in front) or "none") + ".\n\n")
    out.write("\n".join(recommendations(rows, exp.price_per_hour)) + "\n\n")
    failed = [r for r in rows if r.get("stderr_tail")]
    if failed:
        out.write("## Last lines of failed cells\n\n")
        for r in failed:
            out.write(f"### {r.cell}\n\n```\n{r.get('stderr_tail')}\n```\n\n")
    if plots:
        out.write("## Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots) + "\n")
    return out.getvalue()


def write(root: Path) -> Path:
    exp, rows = load_rows(root)
    write_csv(rows, root / "summary.csv")
    plots = write_plots(rows, exp, root / "plots")
    path = root / "report.md"
    path.write_text(render(exp, rows, plots), encoding="utf-8")
    return path
