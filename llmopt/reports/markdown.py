"""report.md: the Markdown writer of a report's contents (contents.Report), the same tables, notes and
recommendations that html.py lays out as report.html."""

from __future__ import annotations

import io
from pathlib import Path

from llmopt.reports.baseline import regression_table
from llmopt.reports.contents import RESULTS_NOTE, SPEED_NOTE, Report
from llmopt.reports.examples import examples_section
from llmopt.reports.published import PUBLISHED
from llmopt.reports.tables import failures_table, hardware_table, main_table, quality_table, unavailable_table

FILE = "report.md"


def render(report: Report) -> str:
    all_rows, sources = report.rows, report.sources
    out = io.StringIO()
    out.write(f"# {report.title}\n\n" + "\n".join(f"- {d}" for d in report.descriptions()) + "\n\n")
    for line in report.model_notes():
        out.write(line + "\n\n")
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
        out.write("## Quality against the reference\n\n" + compared + "\n\n" + report.quality_note() + "\n\n")
    wrote = examples_section(all_rows)
    if wrote:
        out.write("## What the modes wrote\n\nThe first documents: the human reference summary and each cell's.\n\n")
        out.write(wrote + "\n\n")
    out.write("## Failures\n\n" + failures_table(all_rows) + "\n\n")
    absent = unavailable_table(all_rows)
    if absent:
        out.write("## Not available on this machine\n\n" + absent + "\n\n")
    if report.baseline is not None:
        out.write("## Against the baseline\n\n" + regression_table(all_rows, report.baseline) + "\n\n")
    out.write("## Quality against speed\n\n")
    out.write(report.front() + "\n\n")
    out.write("\n".join(report.recommendations()) + "\n\n")
    failed = [r for r in all_rows if r.get("stderr_tail")]
    if failed:
        out.write("## Last lines of failed cells\n\n")
        for r in failed:
            out.write(f"### {r.cell}\n\n```\n{r.get('stderr_tail')}\n```\n\n")
    if report.plots:
        out.write("## Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in report.plots) + "\n")
    if report.left_out:
        out.write("\n## Left out on this machine\n\n" + "\n".join(f"- {line}" for line in report.left_out) + "\n")
    return out.getvalue()


def write_report(folder: Path, report: Report) -> Path:
    path = folder / FILE
    path.write_text(render(report), encoding="utf-8")
    return path
