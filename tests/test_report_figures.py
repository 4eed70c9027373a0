"""Every figure of report.md and report.html is what was measured for exactly its row; where nothing was measured the
cell is blank ("–"), with the reason where the report gives reasons, never 0, 0.0, 1 or 1.000.

The results are written here by hand, as a sweep and `llmopt drift` leave them (each file the runner or the drift
command writes, with only the fields the report reads): a sweep of a packaged model whose cells ran in bfloat16 on a
drift run whose reference ran in float32, cells without GPU memory, energy, roofline or ROUGE, a cell not run and one
this machine cannot run. Then `llmopt report` runs on them for real.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, write_jsonl

from llmopt.results import read_state

DOCS = [f"d{i}" for i in range(4)]
# The main table's columns of a figure the run measures (or not): the summary field each shows.
COLUMNS = {"docs/s": "docs_per_sec", "% roofline": "pct_of_roofline", "run s": "run_s", "load s": "load_s",
           "out tok/s": "output_tokens_per_s", "GPU MiB model / device reserved": "gpu_memory_bytes",
           "peak RSS MiB": "peak_rss_bytes", "J/doc": "energy_per_doc_j", "OOM / skipped": "n_oom",
           "ROUGE-1 [95% CI]": "rouge1"}  # fmt: skip


def summary(strategy: str, model: str, batch: int, dtype: str | None, docs_per_sec: float, **extra: Any) -> dict:
    """A run's summary.json as the runner writes it: what a CPU run measures, and None for what it cannot."""
    from llmopt.models import packaged

    return {
        "strategy": strategy, "model": model, "model_note": packaged.note(model), "dataset": "sample", "status": "ok",
        "n_docs": len(DOCS), "n_completed": len(DOCS), "n_oom": 0, "n_skipped": 0, "n_failed": 0,
        "batch_size": batch, "batch_size_requested": batch, "device": "test CPU", "dtype": dtype,
        "docs_per_sec": docs_per_sec, "output_tokens_per_s": 20 * docs_per_sec, "load_s": 1.5, "run_s": 4 / docs_per_sec,
        "peak_rss_bytes": 900 * 2**20, "gpu_memory_bytes": None, "peak_gpu_mem_bytes": None,
        "peak_gpu_device_used_bytes": None, "energy_per_doc_j": None, "energy_note": "no RAPL counters readable",
        "pct_of_roofline": None, "rouge1": 0.25, "rouge1_ci95": [0.2, 0.3], "rouge2": 0.05, "rougeL": 0.2,
        "oom_events": [], "errors": [], **extra,
    }  # fmt: skip


def run_folder(folder: Path, state: dict, words: str) -> None:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(state))
    records = [{"index": i, "id": d, "status": "ok", "reference": "Boil the eggs.", "prediction": f"{words} {d}",
                "rouge1": 0.2 + 0.02 * i, "rouge2": 0.05, "rougeL": 0.2} for i, d in enumerate(DOCS)]  # fmt: skip
    write_jsonl(folder / "records.jsonl", records)


def drift_mode(strategy: str, dtype: str | None, kl: float, top1: float, **extra: Any) -> dict:
    return {"strategy": strategy, "model": "smollm2-135m", "status": "ok", "dtype": dtype, "gguf_type": None,
            "kl_mean": kl, "kl_p99": 4 * kl, "top1_agreement": top1, "perplexity": 2.5 + kl, "positions": 256,
            "documents": 4, "unlisted_mass": 0.0, "kl_method": "full logits", "dtype_requested": dtype, **extra}  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("figures") / "hand"
    root.mkdir()
    (root / "experiment.yaml").write_text(
        "name: hand\nhardware: test CPU\nmodel: smollm2-135m\ndataset: sample\nreference: default-b1\n"
        "drift: {reference: default, dtype: float32, strategies: [8bit, llamacpp]}\n"
        "cells:\n  - strategy: lead\n  - strategy: default\n    batch_size: [1, 8]\n  - strategy: 8bit\n    batch_size: 8\n"
        "  - strategy: prompt-lookup\n  - strategy: llamacpp\n    name: llamacpp-q8_0\n    options: {gguf_type: q8_0}\n"
        "  - strategy: vllm-awq\n    model: smollm2-135m-awq\n  - strategy: torchao-int4\n  - strategy: vllm\n"
    )
    lead = summary("lead", "none", 1, None, 5000.0, rouge1=0.37, rouge1_ci95=[0.33, 0.41], output_tokens_per_s=None)
    run_folder(root / "lead", lead, "lead sentence")
    run_folder(root / "default-b1", summary("default", "smollm2-135m", 1, "bfloat16", 0.35), "eggs boiled")
    run_folder(root / "default-b8", summary("default", "smollm2-135m", 8, "bfloat16", 0.8), "eggs cooked")
    run_folder(root / "8bit-b8", summary("8bit", "smollm2-135m", 8, "bfloat16", 0.49), "eggs boiled well")
    run_folder(root / "prompt-lookup", summary("prompt-lookup", "smollm2-135m", 1, "bfloat16", 0.3), "eggs")
    q8 = summary("llamacpp", "smollm2-135m", 1, None, 0.97, engine={"gguf_type": "q8_0"}, rouge1=None, rouge1_ci95=None,
                 rouge2=None, rougeL=None, rouge_note="not applicable: test")  # fmt: skip
    run_folder(root / "llamacpp-q8_0", q8, "boiled")
    run_folder(root / "vllm-awq", summary("vllm-awq", "smollm2-135m-awq", 1, "bfloat16", 1.3), "an egg")
    (root / "torchao-int4").mkdir()
    (root / "torchao-int4" / "sweep_cell.json").write_text(json.dumps(
        {"strategy": "torchao-int4", "model": "smollm2-135m", "batch_size": 1, "status": "unavailable",
         "errors": ["no int4 kernel on this CPU"], "returncode": 69}
    ))  # fmt: skip
    # vllm: not run. The drift run: its reference (default in float32) against itself, 8bit in bfloat16 (as the cell
    # ran), llama.cpp on the file as published (Q4_1), not q8_0.
    drift = {
        "model": "smollm2-135m", "reference": {"strategy": "default", "model": "smollm2-135m", "dtype": "float32"},
        "dataset": "sample", "documents": 4, "positions": 256, "reference_top_k": 64, "max_new_tokens": 64,
        "modes": [drift_mode("default", "float32", 0.0, 1.0, reference_check=True),
                  drift_mode("8bit", "bfloat16", 0.0177, 0.916), drift_mode("llamacpp", None, 0.0027, 0.96, gguf_type="Q4_1"),
                  drift_mode("vllm-awq", "bfloat16", 0.2613, 0.667, model="smollm2-135m-awq")],
    }  # fmt: skip
    (root / "drift").mkdir()
    (root / "drift" / "summary.json").write_text(json.dumps(drift))
    result = run_cli("llmopt.report", root)
    assert result.returncode == 0, result.stderr
    return root


def markdown_table(report: str, section: str) -> dict[str, dict[str, str]]:
    """A section's first table of report.md: row by its first cell, then column head -> cell."""
    part = report.split(f"## {section}\n")[1].split("\n## ")[0]
    lines = [line for line in part.splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split(" | ")]
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]
    return {cells[0]: dict(zip(head, cells, strict=True)) for cells in rows}


class Tables(HTMLParser):
    """report.html's tables by id: their heads and their rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.current: list[list[str]] | None = None
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and dict(attrs).get("id", "").startswith("table-"):
            self.current = self.tables.setdefault(dict(attrs)["id"] or "", [])
        elif tag == "tr" and self.current is not None:
            self.current.append([])
        elif tag in ("td", "th") and self.current is not None:
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.current is not None and self.cell is not None:
            self.current[-1].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "table":
            self.current = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def html_table(page: str, table_id: str) -> dict[str, dict[str, str]]:
    parser = Tables()
    parser.feed(page)
    head, *rows = parser.tables[table_id]
    return {cells[0]: dict(zip(head, cells, strict=True)) for cells in rows}


def both_tables(results: Path, section: str, table_id: str) -> list[dict[str, dict[str, str]]]:
    md = markdown_table((results / "report.md").read_text(encoding="utf-8"), section)
    page = html_table((results / "report.html").read_text(encoding="utf-8"), table_id)
    assert md == page, "report.html's table is report.md's"
    return [md, page]


def test_drift_is_blank_with_its_reason_where_it_measured_another_dtype(results: Path):
    """The drift reference ran `default` in float32; default-b1 and default-b8 ran in bfloat16: their drift was not
    measured, and it is not 0 (nor is their top-1 agreement 1). 8bit-b8 ran as the drift run measured it."""
    for quality in both_tables(results, "Quality against the reference", "table-quality"):
        for cell in ("default-b1", "default-b8"):
            row = quality[cell]
            for column in ("KL mean", "KL p99", "top-1 agreement", "perplexity"):
                assert row[column] == "–", (cell, column, row[column])
            assert "float32" in row["drift of"] and "bfloat16" in row["drift of"], row
        assert quality["8bit-b8"]["KL mean"] == "0.0177" and quality["8bit-b8"]["top-1 agreement"] == "0.916"
        assert "bfloat16" in quality["8bit-b8"]["drift of"]
        # llama.cpp: the drift run read the published Q4_1 file; this cell ran q8_0.
        q8 = quality.get("llamacpp-q8_0")
        assert q8 is None or (q8["KL mean"] == "–" and "Q4_1" in q8["drift of"])
        assert quality["vllm-awq"]["KL mean"] == "0.2613"
        assert quality["prompt-lookup"]["KL mean"] == "–" and "not in the drift run" in quality["prompt-lookup"]["drift of"]


def test_unmeasured_figures_are_blank_never_zero_or_one(results: Path):
    """The main table: no GPU (memory), no energy counter, no roofline, no ROUGE, a cell not run, one unavailable."""
    for main in both_tables(results, "Results", "table-results"):
        for cell in ("vllm", "torchao-int4"):  # not run; cannot run here
            row = main[cell]
            measured = {k: v for k, v in row.items() if k not in ("cell", "strategy", "batch", "status")}
            assert set(measured.values()) == {"–"}, (cell, measured)
        for cell, row in main.items():
            state = read_state(results / cell) or {}
            for column, key in COLUMNS.items():
                if state.get(key) is None:
                    assert row[column] == "–" or row[column].startswith("n/a ("), (cell, column, row[column])
            assert row["GPU MiB model / device reserved"] == "–" and row["J/doc"] == "–" and row["% roofline"] == "–"
        assert main["llamacpp-q8_0"]["ROUGE-1 [95% CI]"].startswith("n/a (")
        assert main["lead"]["out tok/s"] == "–"


def test_plots_leave_out_what_was_not_measured(results: Path):
    """A bar or point only where its figure was measured: no 0 bar for a cell without it."""
    page = (results / "report.html").read_text(encoding="utf-8")
    for plot in ("plot-docs-per-sec", "plot-memory", "plot-quality-speed"):
        figure = re.search(rf'Plotly\.newPlot\(\s*"{plot}",\s*(\[.*?\]),\s*\{{', page, re.S)
        assert figure is not None, plot
        for trace in json.loads(figure.group(1)):
            assert 0 not in trace["y"] and None not in trace["y"], (plot, trace["x"], trace["y"])
            assert not {"vllm", "torchao-int4"} & set(map(str, trace.get("x", []) + trace.get("text", []))), plot


def test_the_model_note_names_the_cells_it_describes(results: Path):
    """Two packaged checkpoints: the AWQ packing is said of the vllm-awq cell alone, each note once."""
    from llmopt.models import packaged

    report = (results / "report.md").read_text(encoding="utf-8")
    head = report.split("## Results")[0]
    awq, base = packaged.note("smollm2-135m-awq"), packaged.note("smollm2-135m")
    assert awq is not None and base is not None
    lines = [line for line in head.splitlines() if line.startswith("Model")]
    assert len(lines) == 1 or all(not line.startswith("Model:") for line in lines), lines
    assert "vllm-awq" in next(line for line in lines if "packs them again" in line)
    assert not any("packs them again" in line for line in lines if not line.startswith("Model of vllm-awq")), lines
    # A cell that never ran (torchao-int4: unavailable here) ran no other model: it is no exception to a note.
    assert [line for line in lines if line.startswith("Model (every cell but vllm-awq): ")] == [
        f"Model (every cell but vllm-awq): {base}"
    ]


def test_summary_csv_leaves_unmeasured_figures_empty(results: Path):
    import csv

    with open(results / "summary.csv", encoding="utf-8") as f:
        rows = {r["cell"]: r for r in csv.DictReader(f)}
    for cell in ("vllm", "torchao-int4"):
        assert rows[cell]["docs_per_sec"] == "" and rows[cell]["gate"] == ""
    assert rows["default-b1"]["energy_per_doc_j"] == "" and rows["default-b1"]["pct_of_roofline"] == ""


def plotly_figure(page: str, plot: str) -> tuple[list[dict], dict]:
    """A plot's traces and layout, as the page hands them to Plotly.newPlot."""
    found = re.search(rf'Plotly\.newPlot\(\s*"{plot}",\s*', page)
    assert found is not None, plot
    decoder = json.JSONDecoder()
    at = found.end()
    data, end = decoder.raw_decode(page, at)
    layout, _ = decoder.raw_decode(page, page.index("{", end))
    return data, layout


def test_log_axes_label_values_not_digits():
    """Ticks at 1, 2 and 5 per decade, from one below the least value to one above the greatest, each its value."""
    from llmopt.reports.plots import log_ticks, tick_label

    assert log_ticks([0.303, 2.274]) == [0.2, 0.5, 1.0, 2.0, 5.0]
    assert log_ticks([0.35]) == [0.2, 0.3, 0.4, 0.5], "a narrow range: every whole multiple"
    assert log_ticks([0.022, 0.030]) == [0.02, 0.03, 0.04, 0.05]
    assert log_ticks([0.5, 0.8]) == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert log_ticks([0.3, 39185.9]) == [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0], "six decades: decades only"
    assert [tick_label(t) for t in log_ticks([0.012, 0.07])] == ["0.01", "0.02", "0.05", "0.1"]
    assert log_ticks([]) == [] and log_ticks([0.0]) == []


def test_page_log_axes_carry_value_ticks(results: Path):
    """report.html's throughput and quality-against-speed axes: ticks given as values with their own labels (plotly's
    default labelled the ticks between decades with bare digits: 2, 1, 9 8 7 6 5 4 3)."""
    from llmopt.reports.plots import tick_label

    page = (results / "report.html").read_text(encoding="utf-8")
    for plot, axis in (("plot-docs-per-sec", "yaxis"), ("plot-quality-speed", "xaxis")):
        data, layout = plotly_figure(page, plot)
        ax = layout[axis]
        values = [v for trace in data for v in trace[axis[0]]]
        assert ax["type"] == "log" and ax["tickmode"] == "array", (plot, ax)
        assert ax["ticktext"] == [tick_label(t) for t in ax["tickvals"]] and ax["tickvals"] == sorted(ax["tickvals"])
        assert ax["tickvals"][0] <= min(values) and max(values) <= ax["tickvals"][-1], (plot, ax["tickvals"], values)


def test_a_figure_missing_from_some_cells_is_no_bar(tmp_path: Path):
    """GPU memory measured for one cell and not the other (llama.cpp without NVML): the other is named, not a 0 bar."""
    from llmopt.reports import html
    from llmopt.reports.plots import write_plots
    from llmopt.reports.rows import Row, Source

    source = Source(tmp_path)
    base = {"status": "ok", "model": "m", "docs_per_sec": 1.5, "rouge1": 0.2, "run_s": 3.0, "peak_rss_bytes": 2**30}
    rows = [Row("vllm", "vllm", 1, {**base, "gpu_memory_bytes": 3 * 2**30}, tmp_path / "a", source),
            Row("llamacpp", "llamacpp", 1, {**base, "run_s": None}, tmp_path / "b", source)]  # fmt: skip
    (memory,) = [p for p in html.sweep_plots(rows, "test") if p.title == "Peak memory"]
    data, layout = plotly_figure(memory.html, "plot-memory")
    assert data[0]["x"] == ["vllm"] and data[0]["y"] == [3.0]
    assert "not measured: llamacpp" in layout["title"]["text"]
    written = {p.name for p in write_plots(rows, "test", tmp_path / "plots")}
    assert {"peak_memory.png", "run_time.png", "docs_per_sec.png"} <= written


HIDE = """import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # as if not installed: `import name` raises ImportError
from llmopt.commands import report
sys.exit(report.entry("llmopt report", sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("hidden", "left_out"),
    [
        (["plotly", "adjustText"], ["report.html: plotly is not installed (pip install plotly)",
                                    "adjustText is not installed (pip install adjustText)"]),
        (["matplotlib", "jinja2"], ["plots/*.png: matplotlib is not installed (pip install matplotlib)",
                                    "report.html: jinja2 is not installed (pip install jinja2)"]),
    ],
)  # fmt: skip
def test_a_report_without_plotting_libraries_writes_the_rest(results: Path, tmp_path: Path, hidden: list[str],
                                                             left_out: list[str]):  # fmt: skip
    """A lean install (the GPU box had neither plotly nor adjustText): report.md and summary.csv are written, what
    cannot be is said in one line each with how to get it, and no traceback."""
    import shutil
    import subprocess
    import sys

    from conftest import ROOT, cli_env

    folder = tmp_path / "results"
    shutil.copytree(results, folder, ignore=shutil.ignore_patterns("report.md", "summary.csv", "plots"))
    assert (folder / "report.html").is_file()  # an earlier page, which must not outlive the rows it showed
    done = subprocess.run([sys.executable, "-c", HIDE, ",".join(hidden), str(folder)], cwd=ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == len(left_out) and all(line.startswith("llmopt report: left out: ") for line in lines), lines
    for want in left_out:
        assert any(want in line for line in lines), (want, lines)
    report = (folder / "report.md").read_text(encoding="utf-8")
    assert (folder / "summary.csv").is_file() and "## Quality against the reference" in report
    assert "## Left out on this machine" in report and all(want in report for want in left_out)
    assert not (folder / "report.html").exists()
    assert (folder / "plots" / "docs_per_sec.png").is_file() == ("matplotlib" not in hidden)


def test_a_load_level_without_measured_requests_has_no_error_bar():
    """A level whose every request was a warm-up measured no error rate: no 0% bar on the load test's page."""
    from llmopt.reports import html
    from llmopt.serving import stats
    from llmopt.serving.client import RequestResult

    measured = [RequestResult(f"p{i}", 0.0, 0.3, 0.05, [0.01] * 9, 100, 10) for i in range(5)]
    warmup_only = [RequestResult("w", 0.0, 1.0, 0.1, warmup=True)]
    levels = [{"bin": "all", "concurrency": c, "rate": None, **stats.level_stats(results, 2.0, 3.6)}
              for c, results in ((1, measured), (2, warmup_only))]  # fmt: skip
    assert levels[1]["error_rate"] is None
    summary = {"levels": levels, "load": {"mode": "concurrency"}, "latency_budget_s": 1.0, "error_budget": 0.01}
    (errors,) = [p for p in html.loadtest_plots(summary) if p.title == "Errors per level"]
    data, layout = plotly_figure(errors.html, "plot-errors")
    assert data[0]["x"] == ["all 1"] and data[0]["y"] == [0.0]
    assert "no request measured: all 2" in layout["title"]["text"]
