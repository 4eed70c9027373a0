"""report.html in a real browser: a small sweep of the tiny model (lead, default at batch 1 and 2, repeated loops) goes
through the real pipeline, and headless Chromium (Debian's `chromium`, driven by playwright) opens its page from disk
with the network cut off: no console error, one table row per cell, sorting and filtering, every plot with its points,
the gate colored, the per-document view with differences marked, both themes. Screenshots land in the test's tmp
folder (the path is printed) for a person to look at. Without a browser or playwright, the browser tests skip and say
why; the page's contents are still checked from its HTML.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import read_json, run_cli
from conftest import read_jsonl as read_json_lines

N_DOCS = 4
CELLS = ("lead", "default-b1", "default-b2")


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep of the tiny model through `llmopt sweep`, which writes report.md and report.html."""
    tmp = tmp_path_factory.mktemp("html-sweep")
    spec = tmp / "exp.yaml"
    spec.write_text(
        "name: html-sweep\nhardware: test CPU\nprice_per_hour: 1.0\nmodel: tiny\ndataset: sample\nrepeats: 2\n"
        f"generation: {{max_new_tokens: 8, ignore_eos: true, limit: {N_DOCS}}}\ntimeout_s: 300\n"
        "cells:\n  - strategy: lead\n  - strategy: default\n    batch_size: [1, 2]\n"
    )
    out = tmp / "results"
    result = run_cli("llmopt.sweep", spec, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def compared(swept: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`llmopt report` over two sources (the sweep and a copy under another experiment name) against a baseline."""
    tmp = tmp_path_factory.mktemp("html-compare")
    other = tmp / "other"
    shutil.copytree(swept, other)
    spec = other / "experiment.yaml"
    spec.write_text(spec.read_text().replace("name: html-sweep", "name: html-other"))
    out = tmp / "report"
    result = run_cli("llmopt.report", swept, other, "--out", out, "--baseline", swept)
    assert result.returncode == 0, result.stderr
    return out / "report.html"


@pytest.fixture(scope="module")
def loadtest_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A load test's page from a summary the load test's own statistics build (two bins, three concurrencies)."""
    from llmopt.measure.environment import environment
    from llmopt.reports import html
    from llmopt.serving import stats
    from llmopt.serving.client import RequestResult

    levels = []
    for b, scale in (("1-160", 1.0), ("160-400", 2.0)):
        for c in (1, 2, 4):
            results = []
            for i in range(20):
                r = RequestResult(f"p{i}", 0.0, scale * c * (0.2 + 0.01 * i), 0.05 * c, [0.01] * 9, 100, 10)
                results.append(r)
            results.append(RequestResult("e", 0.0, error="timeout") if c == 4 else RequestResult("w", 0.0, 1.0, 0.1, warmup=True))
            levels.append({"bin": b, "concurrency": c, "rate": None, **stats.level_stats(results, 4.0 * c, 3.6)})
    summary = {
        "target": {"endpoint": "http://127.0.0.1:8000", "model": "tiny", "api": "completions", "stream": True,
                   "api_key_env": None},
        "load": {"mode": "concurrency", "levels": [1, 2, 4], "requests": 20, "duration_s": None, "warmup_requests": 1,
                 "max_tokens": 10, "ignore_eos": True, "seed": 0},
        "payloads": {"source": "sample", "prompt": "published-vllm", "bins": {"1-160": 10, "160-400": 10}},
        "latency_budget_s": 1.0, "error_budget": 0.01, "levels": levels, "stopped_early": [],
        "recommendation": stats.recommend(levels, 1.0, 0.01), "interrupted": False,
        "environment": environment(["--endpoint", "http://127.0.0.1:8000"], "llmopt.loadtest"),
    }  # fmt: skip
    out = tmp_path_factory.mktemp("html-loadtest")
    from llmopt.serving.report import levels_table

    return html.write_loadtest(out, summary, levels_table(summary)), summary


def expected_rows(results: Path) -> dict[str, dict]:
    return {cell: read_json(results / cell / "summary.json") for cell in CELLS}


# --- the page's HTML, without a browser -------------------------------------------------------------------------------


def test_sweep_writes_a_self_contained_page(swept: Path):
    page = swept / "report.html"
    assert (swept / "report.md").is_file() and page.is_file()
    text = page.read_text(encoding="utf-8")
    # One file: no script, style or image fetched from anywhere; plotly.js inside.
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text)
    assert "Plotly.newPlot" in text and len(text) > 1_000_000
    # The cells of report.md's main table, the same strings.
    md = (swept / "report.md").read_text(encoding="utf-8")
    for cell in CELLS:
        line = next(x for x in md.splitlines() if x.startswith(f"| {cell} |"))
        for value in line.strip("| ").split(" | "):
            assert f">{value}</td>" in text.replace("&gt;", ">").replace("&lt;", "<")


def test_loadtest_page_has_its_levels(loadtest_page):
    page, summary = loadtest_page
    text = page.read_text(encoding="utf-8")
    assert text.count("<tr>") >= len(summary["levels"]) + 1
    assert f"Latency budget: p95 end-to-end ≤ {summary['latency_budget_s']} s" in text and "llmopt.loadtest" in text


# --- in the browser ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium on this machine: `make install` installs Debian's chromium (apt-get), or install one")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=path)
        except Exception as exc:  # a browser that cannot start here (no display libraries, a broken install)
            pytest.skip(f"Chromium at {path} does not start: {str(exc).splitlines()[0]}")
        yield b
        b.close()


class Page:
    """A page opened from disk with every network request refused and recorded, and its console errors kept."""

    def __init__(self, browser: Any, path: Path, theme: str = "light") -> None:
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000}, color_scheme=theme)
        self.page = self.context.new_page()
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.route("**/*", self._route)
        self.page.goto(path.as_uri())
        self.page.wait_for_function("[...document.querySelectorAll('.plot')].every(p => p.querySelector('.main-svg'))")

    def _route(self, route: Any) -> None:
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            self.requests.append(route.request.url)
            route.abort()

    def js(self, script: str, arg: Any = None) -> Any:
        return self.page.evaluate(script, arg)

    def column(self, table: str, name: str) -> list[str]:
        script = ("([t, n]) => { const tb = document.querySelector(t);"
                  " const i = [...tb.tHead.rows[0].cells].findIndex(c => c.textContent === n);"
                  " return [...tb.tBodies[0].rows].filter(r => !r.hidden).map(r => r.cells[i].textContent); }")  # fmt: skip
        return self.js(script, [table, name])

    def close(self) -> None:
        self.context.close()


def drawn_points(page: Page) -> dict[str, int]:
    """Per plot: the markers and bars plotly drew into its SVG (one `.point` each)."""
    return page.js("Object.fromEntries([...document.querySelectorAll('.plot')].map(p => "
                   "[p.dataset.title, p.querySelectorAll('.scatterlayer .point, .barlayer .point').length]))")  # fmt: skip


def number(text: str) -> float:
    return float(text.split()[0].replace(",", ""))


def test_sweep_page_in_chromium(browser, swept: Path, tmp_path: Path):
    rows = expected_rows(swept)
    model_cells = [c for c, s in rows.items() if s["model"] != "none" and s.get("docs_per_sec")]
    page = Page(browser, swept / "report.html")
    try:
        assert page.errors == [] and page.requests == []
        # One row per cell, in the experiment's order.
        assert page.column("#table-results", "cell") == list(CELLS)
        # Sorting by docs/s ("0.52 (0.50–0.55)": by the median): ascending, then descending.
        page.page.click("#table-results th:text-is('docs/s')")
        numeric = [number(s) for s in page.column("#table-results", "docs/s")]
        assert numeric == sorted(numeric) and len(numeric) == len(CELLS)
        assert page.column("#table-results", "cell") == sorted(CELLS, key=lambda c: rows[c]["docs_per_sec"])
        page.page.click("#table-results th:text-is('docs/s')")
        numeric = [number(s) for s in page.column("#table-results", "docs/s") if s != "–"]
        assert numeric == sorted(numeric, reverse=True)
        assert page.js("document.querySelector('#table-results th[aria-sort]').textContent") == "docs/s"
        # Filtering.
        page.page.fill("input[data-filter='#table-results tbody tr']", "default")
        assert sorted(page.column("#table-results", "cell")) == [c for c in CELLS if "default" in c]
        page.page.fill("input[data-filter='#table-results tbody tr']", "")
        # Every plot shows a point or bar per row it plots: quality against speed and the bars, one per model cell.
        points = drawn_points(page)
        assert points["Quality against speed"] == len(model_cells)
        assert points["Throughput"] == len(model_cells) and points["Peak memory"] == len(model_cells)
        assert all(n > 0 for n in points.values()), points
        # Repeated loops: the throughput bars carry their range as error bars.
        assert page.js("document.querySelectorAll('#plot-docs-per-sec .errorbar').length") == len(model_cells)
        # Its log axis is labelled with values, bottom to top, each the tick it stands at (plotly's own labels gave
        # the ticks between decades bare digits: 2, then 1, then 9 8 7 6 5 4 3 below it).
        drawn = page.js("[...document.querySelectorAll('#plot-docs-per-sec .ytick text')].map(t => t.textContent)")
        axis = page.js("document.getElementById('plot-docs-per-sec').layout.yaxis")
        assert drawn == axis["ticktext"] and [float(t) for t in drawn] == sorted(axis["tickvals"]), (drawn, axis)
        speeds = [rows[c]["docs_per_sec"] for c in model_cells]
        assert axis["tickvals"][0] <= min(speeds) and max(speeds) <= axis["tickvals"][-1]
        # The quality table: the reference cell's row and the other's against it; verdicts colored (status, gate).
        assert page.column("#table-quality", "reference") == ["default-b1"]
        colored = page.js("[...document.querySelectorAll('td.verdict')].map(td => [td.textContent, "
                          "getComputedStyle(td).backgroundColor])")  # fmt: skip
        gate = page.column("#table-quality", "gate (≥ 99%)")
        if rows["default-b1"]["rouge1"] > 0:  # a ratio to the reference exists: the gate has a verdict
            assert gate[0] in ("passed", "failed", "inconclusive")
            assert [text for text, _ in colored if text == gate[0]]
        else:
            assert gate == ["–"]
        statuses = [rows[c]["status"] for c in CELLS]
        assert [text for text, _ in colored if text in statuses] == statuses
        assert all(color not in ("rgba(0, 0, 0, 0)", "transparent") for _, color in colored)
        # Per document: every document, each mode's summary, differences from the reference mode marked.
        assert page.js("document.querySelectorAll('#documents details.doc').length") == N_DOCS
        assert page.js("document.querySelectorAll('#documents details.doc .doctext').length") == N_DOCS  # the texts
        modes = page.js("[...document.querySelector('#documents details.doc table').tBodies[0].rows].map(r => "
                        "[r.cells[0].firstChild.textContent, r.cells[0].querySelector('.tag')?.textContent || '', "
                        "r.cells[4].querySelectorAll('ins, del').length])")  # fmt: skip
        assert [m[0] for m in modes] == list(CELLS)
        marks = {cell: (tag, n) for cell, tag, n in modes}
        assert marks["default-b1"] == ("reference mode", 0)
        assert marks["lead"][1] > 0  # the lead sentences differ from the model's words
        b1, b2 = (read_json_lines(swept / c / "records.jsonl")[0]["prediction"] for c in ("default-b1", "default-b2"))
        assert marks["default-b2"] == (("same as reference mode", 0) if b1 == b2 else ("", marks["default-b2"][1]))
        assert b1 == b2 or marks["default-b2"][1] > 0
        # Environment: the machine and each run's command.
        env = page.js("document.querySelector('#environment').textContent")
        assert "CPU" in env and "llmopt.run" in env and "transformers" in env
        light = tmp_path / "report-light.png"
        page.page.screenshot(path=str(light), full_page=True)
        # The dark theme: the page and its plots switch together.
        page.page.click("#theme")
        assert page.js("document.documentElement.dataset.theme") == "dark"
        assert page.js("document.getElementById('plot-quality-speed')._fullLayout.paper_bgcolor") != "#fff"
        dark = tmp_path / "report-dark.png"
        page.page.screenshot(path=str(dark), full_page=True)
        print(f"screenshots: {light} {dark}")
        assert page.errors == [] and page.requests == []
    finally:
        page.close()


def test_page_follows_the_system_dark_theme(browser, swept: Path):
    page = Page(browser, swept / "report.html", theme="dark")
    try:
        assert page.js("document.documentElement.dataset.theme") == "dark"
        background = page.js("getComputedStyle(document.body).backgroundColor")
        assert background != "rgb(255, 255, 255)" and page.errors == []
    finally:
        page.close()


def test_comparison_page_in_chromium(browser, compared: Path):
    page = Page(browser, compared)
    try:
        assert page.errors == [] and page.requests == []
        cells = page.column("#table-results", "cell")
        assert cells == [f"{source}/{c}" for source in ("html-sweep", "html-other") for c in CELLS]
        assert page.js("document.querySelectorAll('#table-baseline tbody tr').length") == 2 * len(CELLS)
        assert page.js("document.querySelectorAll('#environment .card').length") == 2
        assert drawn_points(page)["Quality against speed"] == 2 * (len(CELLS) - 1)
    finally:
        page.close()


def test_loadtest_page_in_chromium(browser, loadtest_page, tmp_path: Path):
    path, summary = loadtest_page
    page = Page(browser, path)
    try:
        assert page.errors == [] and page.requests == []
        assert page.js("document.querySelectorAll('#table-levels tbody tr').length") == len(summary["levels"])
        points = drawn_points(page)
        assert points["Latency against load"] == 2 * len(summary["levels"])  # p50 and p95 of every level
        assert points["Errors per level"] == len(summary["levels"])
        # The latency budget is a line on the plot, at its value.
        shapes = page.js("document.getElementById('plot-latency-load').layout.shapes.map(s => [s.y0, s.y1])")
        assert [summary["latency_budget_s"]] * 2 in shapes
        page.page.screenshot(path=str(tmp_path / "loadtest.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'loadtest.png'}")
    finally:
        page.close()


@pytest.mark.parametrize(("verdict", "css"), [("passed", "verdict-passed"), ("failed", "verdict-failed"),
                                              ("inconclusive", "verdict-inconclusive"), ("–", "")])  # fmt: skip
def test_gate_cells_get_their_color_class(verdict: str, css: str):
    from llmopt.reports.html import cell_class

    assert cell_class("gate (≥ 99%)", verdict).split()[-1:] == ([css] if css else [])


def test_json_of_plots_is_the_rows(swept: Path):
    """The quality-against-speed plot's points are the summaries' docs/s and ROUGE-1, not numbers of its own."""
    text = (swept / "report.html").read_text(encoding="utf-8")
    rows = expected_rows(swept)
    figure = re.search(r'Plotly\.newPlot\(\s*"plot-quality-speed",\s*(\[.*?\]),\s*\{', text, re.S)
    assert figure is not None
    traces = json.loads(figure.group(1))
    plotted = sorted(zip((x for t in traces for x in t["x"]), (y for t in traces for y in t["y"]), strict=True))
    wanted = sorted((s["docs_per_sec"], s["rouge1"]) for s in rows.values() if s["model"] != "none")
    assert [v for pair in plotted for v in pair] == pytest.approx([v for pair in wanted for v in pair])
