"""How a report is made: read the rows of one or more results folders (and a baseline's), hold each against its
reference (quality.attach), then write summary.csv, the PNG plots and the report's two writers' pages, report.md
(markdown.py) and report.html (html.py), from the same rows.

report.md and summary.csv need nothing beyond llmopt's own dependencies. The page and the plots need plotting
libraries a lean install (a GPU box's) may lack: what cannot be written is left out and said in one line each, with
how to get it, never a traceback after report.md is written.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from llmopt.reports import html, markdown, quality, rows
from llmopt.reports.contents import Report, plot_title
from llmopt.reports.plots import write_plots
from llmopt.reports.tables import write_csv

HTML_NEEDS = ("plotly", "jinja2")  # the page's plots and template (markupsafe comes with jinja2)


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
    report.plots = write_plots(all_rows, plot_title(all_rows, report.sources), folder / "plots", report.left_out)
    missing = missing_modules(HTML_NEEDS)
    if missing:
        report.left_out.append(f"{html.FILE}: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                               f"installed (pip install {' '.join(missing)})")  # fmt: skip
    path = markdown.write_report(folder, report)
    if missing:
        (folder / html.FILE).unlink(missing_ok=True)  # an earlier page would show figures these rows no longer hold
        return Written(path, None, report.left_out)
    return Written(path, html.write_report(folder, report), report.left_out)


def missing_modules(names: tuple[str, ...]) -> list[str]:
    """The modules of `names` that cannot be imported here."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing
