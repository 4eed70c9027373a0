"""report.html: the HTML writer of a report's contents (contents.Report), one page to explore and to mail, beside
report.md (markdown.py, the other writer of the same rows).

The tables are the ones report.md prints (tables.py builds their cells once); the plots are plotly figures of the
rows plots.py draws, with plotly.js embedded, so the page opens from disk with no network. A per-document view puts
each mode's summary beside the reference, with its words that differ from the reference mode's marked. The page is
rendered by a jinja2 template (llmopt/data/report.html.j2); its only script of our own sorts and filters tables and
switches the light and dark theme.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmopt.paths import DATA_DIR, cache_dir
from llmopt.reports.baseline import regression_cells
from llmopt.reports.contents import RESULTS_NOTE, Report, plot_title
from llmopt.reports.rows import Row, Source
from llmopt.reports.tables import (
    Table,
    failures_cells,
    hardware_cells,
    hardware_note,
    main_cells,
    quality_cells,
    unavailable_cells,
)
from llmopt.results import CONFIG, ENV

FILE = "report.html"

TEMPLATE = "report.html.j2"
LIGHT, DARK = "plotly_white", "plotly_dark"
# The colors of the static PNG plots: a cell, a cell on the Pareto front, a measured energy.
BLUE, RED, GREEN = "#4C72B0", "#C44E52", "#55A868"


@dataclass
class Section:
    """A titled table of the page, with the prose that report.md prints around it."""

    title: str
    table: Table
    note: str = ""
    anchor: str = ""


@dataclass
class Plot:
    title: str
    html: str  # plotly's own <div> and <script>


@dataclass
class ModeSummary:
    cell: str
    text: Any  # markupsafe.Markup: the summary, with its differences from the reference mode's marked
    scores: dict[str, float | None]
    is_reference: bool = False
    same: bool = False  # word for word the reference mode's summary


@dataclass
class DocumentView:
    id: str
    document: str | None
    reference: str
    modes: list[ModeSummary] = field(default_factory=list)


@dataclass
class DocumentGroup:
    """The documents of one source (and GPU type): what the reference mode and every other mode wrote."""

    title: str
    reference_cell: str | None
    documents: list[DocumentView]


@dataclass
class Environment:
    """Where one source ran: its machine, GPU, versions, and the command of each run."""

    name: str
    path: str
    facts: list[tuple[str, str]]
    packages: list[tuple[str, str]]
    commands: list[tuple[str, str]]


# --- plots ---------------------------------------------------------------------------------------------------


def _plot_html(fig: Any, name: str) -> str:
    import plotly.io

    fig.update_layout(template=LIGHT, height=440, margin={"t": 60, "r": 20, "b": 60, "l": 70}, hoverlabel={"namelength": -1})
    return plotly.io.to_html(fig, include_plotlyjs=False, full_html=False, div_id=f"plot-{name}",
                             config={"displaylogo": False, "responsive": True})  # fmt: skip


def _log_axis(values: list[float]) -> dict[str, Any]:
    """A log axis whose ticks are values (1, 2 and 5 times powers of ten, plots.log_ticks), as the PNG plots have
    them: plotly's own labels a decade by its value and the ticks between by a bare digit (2, 1, 9 8 7 ... 3), which
    reads as a second scale."""
    import math

    from llmopt.reports.plots import log_ticks, tick_label

    ticks = log_ticks(values)
    if not ticks:
        return {"type": "log"}
    return {"type": "log", "tickmode": "array", "tickvals": ticks, "ticktext": [tick_label(t) for t in ticks],
            "range": [math.log10(ticks[0]), math.log10(ticks[-1])], "autorange": False}  # fmt: skip


def _log_switch(axis: str, log: bool, values: list[float]) -> list[dict[str, Any]]:
    """plotly's own buttons to switch an axis between a log scale (its ticks from _log_axis) and a linear one."""
    as_log = {f"{axis}.{k}": v for k, v in _log_axis(values).items()}
    as_linear = {f"{axis}.type": "linear", f"{axis}.tickmode": "auto", f"{axis}.autorange": True}
    kinds = {"log": as_log, "linear": as_linear}
    order = ["log", "linear"] if log else ["linear", "log"]
    buttons = [{"label": f"{kind} scale", "method": "relayout", "args": [kinds[kind]]} for kind in order]
    # Dark text on light buttons in both themes: plotly's active button is near white, and the dark template's text too.
    return [{"type": "buttons", "direction": "right", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom",
             "buttons": buttons, "showactive": True, "bgcolor": "#c9d3de", "bordercolor": "#8a96a3",
             "font": {"size": 11, "color": "#1f2328"}}]  # fmt: skip


def _hover(r: Row) -> str:
    ci = r.get("rouge1_ci95")
    lines = [f"<b>{r.cell}</b>", f"docs/s {r.get('docs_per_sec'):.3f}"]
    if r.get("rouge1") is not None:
        lines.append(f"ROUGE-1 {r.get('rouge1'):.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""))
    if r.quality.get("gate"):
        lines.append(f"gate {r.quality['gate']}")
    if r.get("energy_per_doc_j") is not None:
        lines.append(f"{r.get('energy_per_doc_j'):.3g} J/doc")
    return "<br>".join(lines)


def sweep_plots(rows: list[Row], suffix: str) -> list[Plot]:
    """The interactive plots of a report: the rows and measures plots.py draws as PNG."""
    import plotly.graph_objects as go

    from llmopt.reports.plots import measured as with_figure
    from llmopt.reports.plots import memory_measure, plotted, unmeasured_note
    from llmopt.reports.recommend import pareto

    done, scored, measured = plotted(rows)
    plots = []
    if scored:
        front = {r.cell for r in pareto(rows)}
        fig = go.Figure()
        off = [r for r in scored if r.cell not in front]
        on = sorted((r for r in scored if r.cell in front), key=lambda r: r.get("docs_per_sec"))
        # The front's cells are named on the plot; the others on hover (named all, close cells print over each other).
        for name, group, mode, color in (("cells", off, "markers", BLUE), ("Pareto front", on, "lines+markers+text", RED)):
            fig.add_trace(go.Scatter(
                x=[r.get("docs_per_sec") for r in group], y=[r.get("rouge1") for r in group], mode=mode, name=name,
                text=[r.cell for r in group], customdata=[_hover(r) for r in group], hovertemplate="%{customdata}<extra></extra>",
                marker={"size": 11, "color": color}, line={"color": color, "width": 1.5}, textfont={"size": 11},
                textposition=["top center" if i % 2 == 0 else "bottom center" for i in range(len(group))],  # neighbours apart
            ))  # fmt: skip
        for r in rows:
            if r.baseline and r.get("rouge1") is not None:
                floor = f"{r.cell} (no model): ROUGE-1 floor"
                fig.add_hline(y=r.get("rouge1"), line_dash="dash", line_color="gray", annotation_text=floor,
                              annotation_position="bottom right")  # fmt: skip
        speeds = [r.get("docs_per_sec") for r in scored]
        fig.update_layout(title=f"Quality against speed<br><sup>{suffix}</sup>", updatemenus=_log_switch("xaxis", True, speeds))
        fig.update_xaxes(title="documents per second", **_log_axis(speeds))
        fig.update_yaxes(title="ROUGE-1 F1")
        plots.append(Plot("Quality against speed", _plot_html(fig, "quality-speed")))
    if done:
        labels = [r.cell for r in done]
        speeds = [r.get("docs_per_sec") for r in done]
        high = [(r.get("docs_per_sec_max") or v) - v for r, v in zip(done, speeds, strict=True)]
        low = [v - (r.get("docs_per_sec_min") or v) for r, v in zip(done, speeds, strict=True)]
        fig = go.Figure(go.Bar(
            x=labels, y=speeds, marker_color=BLUE, name="docs/s",
            error_y={"type": "data", "array": high, "arrayminus": low, "visible": any(high) or any(low)},
            hovertemplate="%{x}<br>%{y:.4g} docs/s<extra></extra>",
        ))  # fmt: skip
        spread = [v for r in done for v in (r.get("docs_per_sec_min"), r.get("docs_per_sec_max")) if v]
        fig.update_layout(title=f"Throughput per cell<br><sup>{suffix}; whiskers: the range of repeated loops</sup>",
                          updatemenus=_log_switch("yaxis", True, speeds + spread))  # fmt: skip
        fig.update_yaxes(title="documents per second", **_log_axis(speeds + spread))
        plots.append(Plot("Throughput", _plot_html(fig, "docs-per-sec")))
        key, what = memory_measure(done)
        held, unknown = with_figure(done, key)
        memory = [r.get(key) / 2**30 for r in held]
        fig = go.Figure(go.Bar(x=[r.cell for r in held], y=memory, marker_color=BLUE, name="memory",
                               text=[f"{m:.3g}" for m in memory], textposition="outside",
                               hovertemplate="%{x}<br>%{y:.3f} GiB<extra></extra>"))  # fmt: skip
        fig.update_layout(title=f"Peak memory per cell<br><sup>{suffix}{unmeasured_note(unknown)}</sup>")
        fig.update_yaxes(title=what)
        if held:
            plots.append(Plot("Peak memory", _plot_html(fig, "memory")))
    if measured:
        fig = go.Figure(go.Scatter(
            x=[r.get("energy_per_doc_j") for r in measured], y=[r.get("rouge1") for r in measured], mode="markers",
            marker={"size": 11, "color": GREEN}, text=[_hover(r) for r in measured], hovertemplate="%{text}<extra></extra>",
            name="cells",
        ))  # fmt: skip
        joules = [r.get("energy_per_doc_j") for r in measured]
        fig.update_layout(title=f"Quality against energy<br><sup>{suffix}</sup>", updatemenus=_log_switch("xaxis", False, joules))
        fig.update_xaxes(title="energy per document (J, the document loop)")
        fig.update_yaxes(title="ROUGE-1 F1")
        plots.append(Plot("Quality against energy", _plot_html(fig, "energy")))
    return plots


def loadtest_plots(summary: dict[str, Any]) -> list[Plot]:
    """Latency against load with the latency budget, throughput and cost against latency, errors per level."""
    import itertools

    import plotly.colors
    import plotly.graph_objects as go

    levels, mode = summary["levels"], summary["load"]["mode"]
    budget, error_budget = summary["latency_budget_s"], summary["error_budget"]
    bins = list(dict.fromkeys(lv["bin"] for lv in levels))
    colors = dict(zip(bins, itertools.cycle(plotly.colors.qualitative.Plotly), strict=False))  # one color per bin
    plots = []
    fig = go.Figure()
    for b in bins:
        of_bin = [lv for lv in levels if lv["bin"] == b]
        for q, dash in (("p50", "solid"), ("p95", "dash")):
            fig.add_trace(go.Scatter(x=[lv[mode] for lv in of_bin], y=[lv["e2e_s"][q] for lv in of_bin], mode="lines+markers",
                                     name=f"{b} e2e {q}", line={"dash": dash, "color": colors[b]}))  # fmt: skip
    fig.add_hline(y=budget, line_color=RED, annotation_text=f"latency budget: p95 ≤ {budget:g} s")
    latencies = [lv["e2e_s"][q] for lv in levels for q in ("p50", "p95") if lv["e2e_s"][q]]
    fig.update_layout(title="Latency against load", updatemenus=_log_switch("yaxis", False, latencies))
    fig.update_xaxes(title=mode)
    fig.update_yaxes(title="end-to-end latency (s)")
    plots.append(Plot("Latency against load", _plot_html(fig, "latency-load")))
    fig = go.Figure()
    for b in bins:
        of_bin = [lv for lv in levels if lv["bin"] == b]
        fig.add_trace(go.Scatter(x=[lv["e2e_s"]["p95"] for lv in of_bin], y=[lv["output_tokens_per_s"] for lv in of_bin],
                                 mode="lines+markers+text", name=b, text=[f"{lv[mode]:g}" for lv in of_bin],
                                 textposition="top center", line={"color": colors[b]}))  # fmt: skip
    fig.add_vline(x=budget, line_color=RED, annotation_text="latency budget")
    fig.update_layout(title=f"Throughput against latency (labels: {mode})")
    fig.update_xaxes(title="p95 end-to-end latency (s)")
    fig.update_yaxes(title="output tokens/s")
    plots.append(Plot("Throughput against latency", _plot_html(fig, "tokens-latency")))
    # A level with no measured request has no error rate: no bar (not a 0% one), named in the title.
    counted = [lv for lv in levels if lv["error_rate"] is not None]
    uncounted = [f"{lv['bin']} {lv[mode]:g}" for lv in levels if lv["error_rate"] is None]
    fig = go.Figure(go.Bar(x=[f"{lv['bin']} {lv[mode]:g}" for lv in counted], y=[100 * lv["error_rate"] for lv in counted],
                           marker_color=RED, name="error rate"))  # fmt: skip
    fig.add_hline(y=100 * error_budget, line_dash="dash", annotation_text=f"error budget {error_budget:.1%}")
    none = f"<br><sup>no request measured: {', '.join(uncounted)}</sup>" if uncounted else ""
    fig.update_layout(title=f"Errors per level ({mode}){none}")
    fig.update_yaxes(title="error rate (%)")
    plots.append(Plot("Errors per level", _plot_html(fig, "errors")))
    priced = [lv for lv in levels if lv["price_per_10k_transactions"] is not None]
    if priced:
        fig = go.Figure()
        for b in bins:
            of_bin = [lv for lv in priced if lv["bin"] == b]
            cost = [lv["price_per_10k_transactions"] for lv in of_bin]
            fig.add_trace(
                go.Scatter(
                    x=[lv["e2e_s"]["p95"] for lv in of_bin], y=cost, mode="lines+markers", name=b, line={"color": colors[b]}
                )
            )
        fig.add_vline(x=budget, line_color=RED, annotation_text="latency budget")
        fig.update_layout(title="Cost against latency")
        fig.update_xaxes(title="p95 end-to-end latency (s)")
        fig.update_yaxes(title="USD per 10k transactions")
        plots.append(Plot("Cost against latency", _plot_html(fig, "cost-latency")))
    return plots


# --- documents ------------------------------------------------------------------------------------------------


def marked_difference(text: str, reference: str) -> Any:
    """`text` with the words the reference mode's summary lacks in <ins>, and the reference's words it lacks in <del>."""
    from markupsafe import Markup, escape

    mine, theirs = text.split(), reference.split()
    out = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(None, theirs, mine, autojunk=False).get_opcodes():
        if op in ("replace", "delete"):
            out.append(Markup("<del>{}</del>").format(" ".join(theirs[a0:a1])))
        if op in ("replace", "insert"):
            out.append(Markup("<ins>{}</ins>").format(" ".join(mine[b0:b1])))
        if op == "equal":
            out.append(escape(" ".join(mine[b0:b1])))
    return Markup(" ").join(out)


def _dataset_texts(spec: str | None) -> dict[str, str]:
    """The documents' text by id, where the dataset is on this machine; a report never downloads one."""
    from llmopt.documents.datasets import load_dataset
    from llmopt.errors import UsageError

    uncached = spec == "wikilingua" and not (cache_dir() / "wikilingua_100.jsonl").is_file()
    if not spec or spec.startswith("workload:") or uncached:
        return {}
    try:
        return {d.id: d.document for d in load_dataset(spec)}
    except (UsageError, OSError):
        return {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def document_groups(rows: list[Row]) -> list[DocumentGroup]:
    """Per source (and GPU type): every document, the reference, and what each mode wrote, marked against the
    reference mode (the row quality.attach made the reference of its group)."""
    from markupsafe import escape

    groups: dict[tuple[Path, str | None], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.source.path, r.hardware_type), []).append(r)
    out = []
    for (_, gpu_type), group in groups.items():
        records = {r.cell: r.completed_records() for r in group if r.folder.is_dir()}
        records = {cell: recs for cell, recs in records.items() if recs}
        if not records:
            continue
        reference = next((r for r in group if r.quality.get("is_reference")), None)
        ref_records = records.get(reference.cell, {}) if reference else {}
        # The dataset the runs read, as each run's config.json names it (a workload has no text to show).
        spec = next((d for r in group if (d := _read_json(r.folder / CONFIG).get("identity", {}).get("dataset"))), None)
        texts = _dataset_texts(spec)
        order: dict[str, tuple[int, str]] = {}
        for recs in records.values():
            for doc, rec in recs.items():
                order.setdefault(doc, (rec.get("index", 0), rec.get("reference", "")))
        documents = []
        for doc, (_, ref_summary) in sorted(order.items(), key=lambda item: item[1][0]):
            view = DocumentView(doc, texts.get(doc), ref_summary)
            base = ref_records.get(doc, {}).get("prediction")
            for cell, recs in records.items():
                rec = recs.get(doc)
                if rec is None or rec.get("prediction") is None:
                    continue
                prediction = rec["prediction"]
                is_ref = reference is not None and cell == reference.cell
                text = escape(prediction) if base is None or is_ref else marked_difference(prediction, base)
                scores = {k: rec.get(k) for k in ("rouge1", "rouge2", "rougeL")}
                view.modes.append(ModeSummary(cell, text, scores, is_ref, base is not None and not is_ref and prediction == base))
            documents.append(view)
        title = group[0].source.name + (f" on {gpu_type}" if gpu_type else "")
        out.append(DocumentGroup(title, reference.cell if reference else None, documents))
    return out


# --- environment ----------------------------------------------------------------------------------------------


def _gib(n: Any) -> str:
    return f"{n / 2**30:.1f} GiB" if isinstance(n, int | float) else "–"


def environment_facts(env: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A run's env.json as (what, value) lines, and its package versions."""
    gpu = env.get("gpu") or {}
    gpu_text = "none"
    if gpu:
        gpu_text = f"{gpu.get('count', 1)} × {gpu.get('name')} ({_gib(gpu.get('memory_bytes'))}), driver {gpu.get('driver', '–')}"
    facts = [("host", env.get("host")), ("CPU", f"{env.get('cpu')} ({env.get('cpus_allowed')} of {env.get('cpu_count')} cores)")]
    facts += [("memory", _gib(env.get("memory_bytes"))), ("GPU", gpu_text), ("Python", env.get("python"))]
    facts += [("platform", env.get("platform")), ("llmopt commit", env.get("git_commit")), ("started", env.get("started"))]
    packages = [(k, v) for k, v in (env.get("packages") or {}).items() if v]
    return [(k, str(v)) for k, v in facts if v], packages


def environments(rows: list[Row], sources: list[Source]) -> list[Environment]:
    """Each source's machine and versions (from the first run that recorded them), and each run's command."""
    out = []
    for source in sources:
        mine = [r for r in rows if r.source.path == source.path]
        envs = [(r.cell, env) for r in mine if (env := _read_json(r.folder / ENV))]
        facts, packages = environment_facts(envs[0][1]) if envs else ([], [])
        exp = source.experiment
        if exp is not None:
            facts = [("experiment", exp.name), ("hardware (as labelled)", exp.hardware), *facts]
        out.append(Environment(source.name, str(source.path), facts, packages, [(c, e.get("command", "–")) for c, e in envs]))
    return out


# --- the page -------------------------------------------------------------------------------------------------


def inline(text: str) -> Any:
    """The little Markdown report.md's prose uses (`code`, **bold**) as HTML, the rest escaped."""
    from markupsafe import Markup, escape

    html = str(escape(text))
    html = re.sub(r"`([^`]+)`", r"<code>\1</code>", html)
    return Markup(re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", html))


def cell_class(head: str, text: str) -> str:
    """A class that colors a verdict: the quality gate, a run's status, a change beyond noise."""
    h = head.lower()
    if h.startswith("gate") or h == "status":
        return f"verdict verdict-{text.split()[0].lower()}" if text and text != "–" else ""
    if h in ("speed", "quality") and text in ("beyond noise", "within noise"):
        return "verdict verdict-" + text.split()[0]
    return "wrap" if h in ("error", "why") else ""


def render(title: str, **context: Any) -> str:
    import jinja2
    import plotly.io
    import plotly.offline

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(DATA_DIR), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["inline"] = inline
    env.globals["cell_class"] = cell_class
    themes = {"light": plotly.io.templates[LIGHT].to_plotly_json(), "dark": plotly.io.templates[DARK].to_plotly_json()}
    plotly_js, version = plotly.offline.get_plotlyjs(), plotly.offline.get_plotlyjs_version()
    return env.get_template(TEMPLATE).render(title=title, plotlyjs=plotly_js, plotly_version=version, themes=themes, **context)


def sections(report: Report) -> list[Section]:
    """report.md's tables, in its order, as the page's sections: the same cells."""
    rows = report.rows
    found = [Section("Results", main_cells(rows), RESULTS_NOTE, "results")]
    if (by_type := hardware_cells(rows)) is not None:
        found.append(Section("GPU types side by side", by_type, hardware_note(rows), "gpu-types"))
    if (compared := quality_cells(rows)) is not None:
        found.append(Section("Quality against the reference", compared, report.quality_note(), "quality"))
    if (failures := failures_cells(rows)) is not None:
        found.append(Section("Failures", failures, anchor="failures"))
    if (absent := unavailable_cells(rows)) is not None:
        found.append(Section("Not available on this machine", absent, anchor="unavailable"))
    if report.baseline is not None:
        against = regression_cells(rows, report.baseline)
        note = "" if against else "No cell of these results matches a cell of the baseline."
        found.append(Section("Against the baseline", against or (["cell"], []), note, "baseline"))
    return found


def write_report(folder: Path, report: Report) -> Path:
    """report.html for a sweep, runs, several machines or a baseline comparison: the sections report.md prints."""
    rows = report.rows
    html = render(
        report.title,
        kind="report",
        descriptions=[*report.descriptions(), *report.model_notes()],
        sections=sections(report),
        recommendations=[report.front(), *report.recommendations()],
        plots=sweep_plots(rows, plot_title(rows, report.sources)),
        groups=document_groups(rows),
        environments=environments(rows, report.sources),
        failed=[(r.cell, r.get("stderr_tail")) for r in rows if r.get("stderr_tail")],
    )
    path = folder / FILE
    path.write_text(html, encoding="utf-8")
    return path


def write_loadtest(out: Path, summary: dict[str, Any], levels: tuple[list[str], list[list[str]]]) -> Path:
    """report.html for a load test: its levels table (head and cells, as report.md has them: the load test builds
    them, since a report never imports serving), latency against load with the budgets, and where it ran."""
    target, load = summary["target"], summary["load"]
    descriptions = [
        f"Target: {target['endpoint']}, {target['api']} API, {'streaming' if target['stream'] else 'not streaming'}; "
        f"model `{target['model']}`. Load: {load['mode']} {', '.join(f'{v:g}' for v in load['levels'])}, "
        f"{load['max_tokens']} new tokens at most. Payloads: {summary['payloads']['source']}.",
        f"Latency budget: p95 end-to-end ≤ {summary['latency_budget_s']} s; error budget: {summary['error_budget']:.1%}.",
    ]
    if load.get("seed") is not None:
        descriptions.append(f"Seed {load['seed']}" + (" (fresh for this test)." if load.get("seed_fresh") else "."))
    if load.get("warmup_s") or load.get("cooldown_s"):
        descriptions.append(f"Steady-state window: requests sent in a level's first {load.get('warmup_s') or 0:g} s or "
                            f"ending in its last {load.get('cooldown_s') or 0:g} s are not counted.")  # fmt: skip
    descriptions += [f"Default: {line}." for line in summary["payloads"].get("defaults_chosen") or []]
    blank = sorted({f"{figure}: {why}" for lv in summary["levels"] for figure, why in (lv.get("not_measured") or {}).items()})
    if blank:
        descriptions.append("Not measured (a dash in the table): " + "; ".join(blank) + ".")
    env = summary.get("environment") or {}
    facts, packages = environment_facts(env) if env else ([], [])
    environments = [Environment("load generator", str(out), facts, packages, [("loadtest", env["command"])] if env else [])]
    html = render(
        f"Load test: {target['model']}",
        kind="loadtest",
        descriptions=descriptions,
        sections=[Section("Levels", levels, anchor="levels")],
        recommendations=[f"- {rec['statement']}" for rec in summary["recommendation"]],
        plots=loadtest_plots(summary) if summary["levels"] else [],
        groups=[],
        environments=environments,
        failed=[],
    )
    path = out / "report.html"
    path.write_text(html, encoding="utf-8")
    return path


def tune_plots(summary: dict[str, Any]) -> list[Plot]:
    """Cost (or its inverse, throughput) against drift and against latency, one point per measured configuration."""
    import plotly.graph_objects as go

    points = [p for p in summary.get("points") or [] if p.get("throughput")]
    online = summary["settings"]["objective"] == "online"
    x_title = (
        "cost, " + points[0]["cost_unit"]
        if points and points[0].get("cost")
        else ("1 / throughput (s per output token)" if online else "1 / throughput (s per document)")
    )
    plots = []
    for y, y_title, name in (
        ("kl_mean", "KL mean against the reference", "cost-kl"),
        ("latency_s", "p95 TTFT at the SLO load, s" if online else "s per document", "cost-latency"),
    ):
        have = [p for p in points if p.get(y) is not None]
        if not have:
            continue
        fig = go.Figure()
        for kept in (True, False):
            group = [p for p in have if (p.get("rejected") is None) == kept]
            if not group:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[p["cost"] if p.get("cost") else 1 / p["throughput"] for p in group],
                    y=[p[y] for p in group],
                    mode="markers+text",
                    text=[p["key"] for p in group],
                    textposition="top center",
                    name="kept" if kept else "rejected",
                    marker={"color": BLUE if kept else RED, "size": 10},
                    hovertext=[f"{p['key']}<br>{p.get('rejected') or 'kept'}" for p in group],
                    hoverinfo="text",
                )
            )
        fig.update_layout(title=f"{y_title} against cost", xaxis_title=x_title, yaxis_title=y_title)
        plots.append(Plot(f"{y_title} against cost", _plot_html(fig, name)))
    return plots


def write_tune(folder: Path, summary: dict[str, Any], configurations: Table, rejections: Table,
               headline: list[str]) -> Path:  # fmt: skip
    """report.html for a tune folder: the answer, every configuration with its figures, the rejections, the fronts."""
    s = summary["settings"]
    descriptions = [
        f"Model `{s['model']}`, objective {s['objective']}"
        + (f", SLO `{s['slo']}`" if s.get("slo") else "")
        + f", gate {s['gate']:.0%}, drift limits KL ≤ {s['max_kl']:g} and top-1 ≥ {s['min_top1']:g}."
    ]
    descriptions += headline
    sections = [Section("Configurations", configurations, anchor="configurations")]
    if rejections[1]:
        sections.append(Section("Rejected", rejections, anchor="rejected"))
    html = render(
        f"llmopt tune: {s['model']}", kind="tune", descriptions=descriptions, sections=sections,
        recommendations=[f"- {key}: `{line}`" for key, line in (summary.get("reproduce") or {}).items()],
        plots=tune_plots(summary), groups=[], environments=[], failed=[],
    )  # fmt: skip
    path = folder / "report.html"
    path.write_text(html, encoding="utf-8")
    return path
