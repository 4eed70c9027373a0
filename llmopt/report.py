"""python -m llmopt.report results/X: report.md, summary.csv and plots/ from a sweep's cells.

python -m llmopt.report results/cpu-demo
python -m llmopt.report --published lcary-2024      # the published table alone
"""

from __future__ import annotations

import csv
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmopt import cli, experiment
from llmopt.errors import UsageError

PROG = "python -m llmopt.report"
PUBLISHED_DIR = Path(__file__).resolve().parent.parent / "results" / "published"
PUBLISHED = {
    "lcary-2024": (
        "lcary_2024_wikilingua_llama2_7b.csv",
        'Luc Cary, "Llama2 7b Benchmarks" (2024-01-17), lcary/ai-summarization-benchmarks, data/results_*.json (CC0)',
    )
}
ROUGE_MARGIN = 0.01  # "within 1 point" of the best ROUGE-1


def strategy_label(strategy: str) -> str:
    """A user's `path/to/file.py:Class` shows as `Class`."""
    return strategy.rpartition(":")[2] if ":" in strategy else strategy


@dataclass
class Row:
    cell: str
    strategy: str
    batch_size: int
    summary: dict[str, Any]
    published: dict[str, str] | None = None

    def get(self, key: str) -> Any:
        return self.summary.get(key)

    @property
    def baseline(self) -> bool:
        """A row with no model (`lead`): a quality floor, not a way to serve a model."""
        return self.get("model") == "none"

    @property
    def usable(self) -> bool:
        """A model row that produced summaries, so it can compete on speed and quality."""
        return (
            not self.baseline
            and self.get("status") in ("ok", "oom", "partial")
            and bool(self.get("docs_per_sec"))
            and self.get("rouge1") is not None
        )


def published_rows(table: str) -> list[dict[str, str]]:
    name, _ = PUBLISHED[table]
    path = PUBLISHED_DIR / name
    if not path.is_file():
        raise UsageError(f"published table {str(path)!r} is missing")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def match_published(rows: list[Row], reproduce: dict[str, Any] | None) -> None:
    """The study's headline row of the same GPU, strategy and batch size, beside each of ours."""
    if not reproduce:
        return
    table = published_rows(reproduce["table"])
    gpu = reproduce.get("gpu")
    for row in rows:
        candidates = [
            p
            for p in table
            if (gpu is None or p["gpu"] == gpu) and p["strategy"] == row.strategy and p["batch_size"] == str(row.batch_size)
        ]
        headline = [p for p in candidates if p["headline"] == "yes"] or [p for p in candidates if p["n_docs"] == "100"]
        row.published = headline[0] if headline else None


def load_rows(root: Path) -> tuple[experiment.Experiment, list[Row]]:
    spec = root / "experiment.yaml"
    if not spec.is_file():
        raise UsageError(f"{str(root)!r} is not a sweep's results folder (no experiment.yaml)")
    exp = experiment.load(spec)
    from llmopt.sweep import cell_state

    rows = []
    for cell in exp.cells:
        state = cell_state(root / cell.name)
        if state is None:
            state = {"status": "not run", "errors": []}
        rows.append(Row(cell.name, cell.strategy, cell.batch_size, state))
    match_published(rows, exp.reproduce)
    return exp, rows


def pareto(rows: list[Row]) -> list[Row]:
    """Rows no other row beats on both docs/s and ROUGE-1."""
    usable = [r for r in rows if r.usable]

    def dominated(r: Row) -> bool:
        return any(
            o.get("docs_per_sec") >= r.get("docs_per_sec")
            and o.get("rouge1") >= r.get("rouge1")
            and (o.get("docs_per_sec") > r.get("docs_per_sec") or o.get("rouge1") > r.get("rouge1"))
            for o in usable
        )

    return sorted((r for r in usable if not dominated(r)), key=lambda r: -r.get("docs_per_sec"))


def cost_per_million_tokens(row: Row, price_per_hour: float) -> float | None:
    tps = row.get("output_tokens_per_s")
    return price_per_hour * 1e6 / (3600 * tps) if tps else None


def cost_per_100_docs(row: Row, price_per_hour: float) -> float | None:
    dps = row.get("docs_per_sec")
    return price_per_hour * 100 / (3600 * dps) if dps else None


def recommendations(rows: list[Row], price: float | None) -> list[str]:
    usable = [r for r in rows if r.usable]
    floors = [f"- Quality floor without a model: **{r.cell}**, ROUGE-1 {r.get('rouge1'):.4f}; a model below it adds nothing."
              for r in rows if r.baseline and r.get("rouge1") is not None]  # fmt: skip
    absent = [r.cell for r in rows if r.get("status") == "unavailable"]
    if absent:  # the comparison below is among what ran; say what it could not include
        floors.append(f"- Not compared, since this machine cannot run them: {', '.join(f'**{c}**' for c in absent)} "
                      "(see \"Not available on this machine\").")  # fmt: skip
    if not usable:
        return ["- No model cell completed with both a speed and a ROUGE score; nothing to recommend.", *floors]
    fastest = max(usable, key=lambda r: r.get("docs_per_sec"))
    best = max(usable, key=lambda r: r.get("rouge1"))
    near = [r for r in usable if r.get("rouge1") >= best.get("rouge1") - ROUGE_MARGIN]
    balanced = max(near, key=lambda r: r.get("docs_per_sec"))
    lines = [
        f"- Fastest: **{fastest.cell}**, {fastest.get('docs_per_sec'):.3f} docs/s (ROUGE-1 {fastest.get('rouge1'):.4f}).",
        f"- Best ROUGE-1: **{best.cell}**, {best.get('rouge1'):.4f} ({best.get('docs_per_sec'):.3f} docs/s).",
        f"- Best ROUGE-1 within {ROUGE_MARGIN * 100:.0f} point of the best, at the highest speed: **{balanced.cell}**, "
        f"{balanced.get('docs_per_sec'):.3f} docs/s, ROUGE-1 {balanced.get('rouge1'):.4f}.",
    ]
    if price:
        per_tokens = [(cost_per_million_tokens(r, price), r) for r in usable if cost_per_million_tokens(r, price)]
        per_docs = [(cost_per_100_docs(r, price), r) for r in usable if cost_per_100_docs(r, price)]
        if per_tokens:
            cost, row = min(per_tokens, key=lambda x: x[0])
            lines.append(f"- Cheapest per 1M output tokens: **{row.cell}**, ${cost:.3g}.")
        if per_docs:
            cost, row = min(per_docs, key=lambda x: x[0])
            lines.append(f"- Cheapest per 100 documents: **{row.cell}**, ${cost:.3g}.")
        lines.append(
            f"- Cost = ${price:g}/hour × generation time: per 1M output tokens = price × 10^6 / (3600 × output tokens/s); "
            "per 100 documents = price × 100 / (3600 × docs/s). Load time and idle time are not counted."
        )
    return lines + floors


def _num(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _mib(value: Any) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f}"


def main_table(exp: experiment.Experiment, rows: list[Row]) -> str:
    head = ["cell", "strategy", "batch", "docs/s", "% roofline", "run s", "load s", "out tok/s"]
    head += ["peak GPU MiB alloc / device", "peak RSS MiB"]
    head += ["OOM / skipped", "ROUGE-1 [95% CI]", "status"]
    if exp.reproduce:
        head += ["published docs/s", "published total s", "published ROUGE-1", "docs/s ours ÷ published"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ci = r.get("rouge1_ci95")
        rouge = "–" if r.get("rouge1") is None else f"{r.get('rouge1'):.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"
        if r.get("rouge_note"):
            rouge = "n/a (" + r.get("rouge_note").split(": ", 1)[-1] + ")"
        batch = "engine" if r.get("batching") == "engine" else str(r.batch_size)
        if r.batch_size == "auto":
            batch = f"auto → {r.get('batch_size')}" if r.get("batch_size") else "auto"
        pct = _num(r.get("pct_of_roofline"), ".1f")
        cells = [r.cell, strategy_label(r.strategy), batch, _num(r.get("docs_per_sec")), pct, _num(r.get("run_s"), ".1f")]
        cells += [_num(r.get("load_s"), ".1f"), _num(r.get("output_tokens_per_s"), ".1f")]
        alloc, device = r.get("peak_gpu_mem_bytes"), r.get("peak_gpu_device_used_bytes")
        cells += [f"{_mib(alloc)} / {_mib(device)}" if alloc or device else "–", _mib(r.get("peak_rss_bytes"))]
        cells += [f"{r.get('n_oom') or 0} / {r.get('n_skipped') or 0}", rouge, str(r.get("status"))]
        if exp.reproduce:
            p = r.published
            if p:
                ours = r.get("docs_per_sec")
                ratio = f"{ours / float(p['docs_per_sec']):.2f}×" if ours else "–"
                cells += [p["docs_per_sec"], p["total_time_s"], p["rouge1"], ratio]
            else:
                cells += ["–"] * 4
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def failures_table(exp: experiment.Experiment, rows: list[Row]) -> str:
    """The study's failure table (strategy, GPU, batch size, error, documents), from what the runs recorded."""
    entries = []
    for r in rows:
        for event in r.get("oom_events") or []:
            if event.get("stage") == "load":
                entries.append((r.strategy, r.batch_size, "OutOfMemoryError while loading the model", len(event["doc_ids"])))
            else:
                entries.append((r.strategy, event["batch_size"], "OutOfMemoryError", len(event["doc_ids"])))
        if r.get("n_skipped"):
            entries.append(
                (r.strategy, r.batch_size, f"{r.get('n_skipped')} of {r.get('n_docs')} documents skipped", r.get("n_skipped"))
            )
        if r.get("status") == "failed":
            error = "; ".join(r.get("errors") or []) or "failed"
            entries.append((r.strategy, r.batch_size, error.replace("|", "/")[:200], r.get("n_docs") or "–"))
    if not entries:
        return "No out-of-memory errors, skipped documents or failed cells."
    lines = ["| strategy | GPU | batch size | error | documents |", "|---|---|---|---|---|"]
    lines += [f"| {strategy_label(s)} | {exp.hardware} | {b} | {e} | {n} |" for s, b, e, n in entries]
    return "\n".join(lines)


def unavailable_table(rows: list[Row]) -> str | None:
    """Cells this machine cannot run (a missing package, no GPU, no int4 kernel): not failures, and not measured."""
    absent = [r for r in rows if r.get("status") == "unavailable"]
    if not absent:
        return None
    lines = ["| cell | strategy | why |", "|---|---|---|"]
    for r in absent:
        why = "; ".join(r.get("errors") or []).replace("|", "/")
        lines.append(f"| {r.cell} | {strategy_label(r.strategy)} | {why} |")
    return "\n".join(lines)


def write_csv(rows: list[Row], path: Path) -> None:
    keys: list[str] = ["cell"]
    for r in rows:
        keys += [k for k in r.summary if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for r in rows:
            flat = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.summary.items()}
            writer.writerow({"cell": r.cell, **flat})


def write_plots(rows: list[Row], exp: experiment.Experiment, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    folder.mkdir(parents=True, exist_ok=True)
    done = [r for r in rows if r.get("docs_per_sec") and not r.baseline]
    title_suffix = f"{exp.name} ({exp.hardware})"
    written = []

    def bars(values: list[float], labels: list[str], ylabel: str, title: str, name: str, log: bool = False) -> None:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.5))
        ax.bar(labels, values, color="#4C72B0")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n{title_suffix}", fontsize=11)
        if log:
            ax.set_yscale("log")
            plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        for x, v in enumerate(values):
            ax.annotate(f"{v:.3g}", (x, v), ha="center", va="bottom", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = folder / name
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    if done:
        labels = [r.cell for r in done]
        bars(
            [r.get("docs_per_sec") for r in done],
            labels,
            "documents per second (log scale)",
            "Throughput per cell",
            "docs_per_sec.png",
            log=True,
        )
        bars(
            [r.get("run_s") or 0.0 for r in done],
            labels,
            "run time (s)",
            "Document loop time per cell (load excluded)",
            "run_time.png",
        )
        # The device's figure (NVML) compares every engine, also one in its own process (vLLM), where this
        # process's allocator sees nothing; without NVML, the allocator's; without a GPU, the process's RSS.
        if any(r.get("peak_gpu_device_used_bytes") for r in done):
            key, what = "peak_gpu_device_used_bytes", "peak GPU memory used on the device (GiB, NVML)"
        elif any(r.get("peak_gpu_mem_bytes") for r in done):
            key, what = "peak_gpu_mem_bytes", "peak GPU memory allocated (GiB)"
        else:
            key, what = "peak_rss_bytes", "peak process RSS (GiB), no GPU"
        memory = [r.get(key) or 0 for r in done]
        bars([m / 2**30 for m in memory], labels, what, "Peak memory per cell", "peak_memory.png")
    scored = [r for r in rows if r.usable]
    if scored:
        fig, ax = plt.subplots(figsize=(7, 5))
        front = {r.cell for r in pareto(rows)}
        for i, r in enumerate(sorted(scored, key=lambda r: r.get("docs_per_sec"))):
            color = "#C44E52" if r.cell in front else "#4C72B0"
            ax.scatter(r.get("docs_per_sec"), r.get("rouge1"), s=60, color=color, zorder=3)
            # Staggered labels: cells of similar speed and score would print over each other.
            offset = (6, 6 + 11 * (i % 3))
            ax.annotate(r.cell, (r.get("docs_per_sec"), r.get("rouge1")), textcoords="offset points", xytext=offset, fontsize=8)
        for r in rows:
            if r.baseline and r.get("rouge1") is not None:
                ax.axhline(
                    r.get("rouge1"), color="gray", linestyle="--", linewidth=1, label=f"{r.cell} (no model): ROUGE-1 floor"
                )
        front_rows = sorted((r for r in scored if r.cell in front), key=lambda r: r.get("docs_per_sec"))
        ax.plot(
            [r.get("docs_per_sec") for r in front_rows],
            [r.get("rouge1") for r in front_rows],
            color="#C44E52",
            alpha=0.5,
            label="Pareto front",
        )
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("documents per second (log scale)")
        ax.set_ylabel("ROUGE-1 F1")
        ax.set_title(f"Quality against speed\n{title_suffix}", fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = folder / "rouge1_vs_docs_per_sec.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


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


def print_published(table: str) -> None:
    name, source = PUBLISHED[table]
    rows = published_rows(table)
    print(f"{table}: {source}\n(file results/published/{name})\n")
    cols = ["gpu", "strategy", "batch_size", "n_docs", "docs_per_sec", "total_time_s", "rouge1", "headline", "note"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols))


def main(argv: list[str] | None = None) -> int:
    p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="?", type=Path, help="a sweep's results folder")
    p.add_argument("--published", choices=sorted(PUBLISHED), help="print a published table and stop")
    args = p.parse_args(argv)
    if args.published:
        print_published(args.published)
        return 0
    if args.results is None:
        raise UsageError("give a results folder, or --published NAME")
    path = write(args.results)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(cli.guarded(PROG, main))
