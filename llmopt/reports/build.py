"""How a report is made: read the rows of one or more results folders (and a baseline's), hold each against its
reference (quality.attach), then write summary.csv, the PNG plots and the report's two writers' pages, report.md
(markdown.py) and report.html (html.py), from the same rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmopt.reports import html, markdown, quality, rows
from llmopt.reports.contents import Report, plot_title
from llmopt.reports.plots import write_plots
from llmopt.reports.tables import write_csv


@dataclass
class Written:
    """The files a report wrote, and what this machine could not write (one line each: what, why, how to get it)."""

    markdown: Path
    html: Path | None
    left_out: list[str]


def build_report(paths: list[Path], out: Path | None = None, baseline: list[Path] | None = None,
                 price_per_kwh: float | None = None) -> Written:  # fmt: skip
    """Write report.md, report.html, summary.csv and plots/ for `paths` into `out` (default: the one folder given)."""
    all_rows = rows.load(paths)
    quality.attach(all_rows)
    base = None
    if baseline:
        base = rows.load(baseline)
        quality.attach(base)
    report = Report(all_rows, rows.sources(paths), base, price_per_kwh)
    folder = out or paths[0]
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(all_rows, folder / "summary.csv")
    report.plots = write_plots(all_rows, plot_title(all_rows, report.sources), folder / "plots")
    path = markdown.write_report(folder, report)
    page = html.write_report(folder, report)
    return Written(path, page, report.left_out)
