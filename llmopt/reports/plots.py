"""The report's plots: docs/s per cell (with the range of repeated loops), run time, peak memory, quality against
speed with its Pareto front, and energy per document against quality.

A bar or a point only where its figure was measured: a cell without it is named under the title, never drawn as 0.
Log axes carry ticks at 1, 2 and 5 times a power of ten, each labelled with its value (log_ticks), in the PNG plots
and the page's alike: a decade's label beside bare digits for its minor ticks reads as a second scale.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llmopt.reports.recommend import pareto
from llmopt.reports.rows import Row


def memory_measure(done: list[Row]) -> tuple[str, str]:
    """The summary field the memory plot shows, and its axis label.

    The run's own GPU memory (gpu_memory_bytes): the allocator's peak, or an engine's weights + KV cache (vLLM's
    reservation is a share of the card, whatever the model). Summaries from before it was reported: the device's
    figure (NVML), else the allocator's; without a GPU, the process's RSS."""
    if any(r.get("gpu_memory_bytes") for r in done):
        return "gpu_memory_bytes", "GPU memory (GiB): allocator peak, or engine weights + KV cache"
    if any(r.get("peak_gpu_device_used_bytes") for r in done):
        return "peak_gpu_device_used_bytes", "peak GPU memory used on the device (GiB, NVML)"
    if any(r.get("peak_gpu_mem_bytes") for r in done):
        return "peak_gpu_mem_bytes", "peak GPU memory allocated (GiB)"
    return "peak_rss_bytes", "peak process RSS (GiB), no GPU"


def measured(rows: list[Row], key: str) -> tuple[list[Row], list[str]]:
    """The rows that measured `key`, and the cells that did not (named under a plot's title, not drawn as 0)."""
    return [r for r in rows if r.get(key) is not None], [r.cell for r in rows if r.get(key) is None]


def unmeasured_note(cells: list[str]) -> str:
    return f"; not measured: {', '.join(cells)}" if cells else ""


def log_ticks(values: list[float]) -> list[float]:
    """Ticks for a log axis over `values`: 1, 2 and 5 times each power of ten from the one below the least value to
    the one above the greatest (only the powers of ten beyond four decades; every whole multiple where that gives
    fewer than four ticks), so that the axis starts and ends on a labelled tick."""
    positive = [v for v in values if v and v > 0]
    if not positive:
        return []
    low, high = min(positive), max(positive)
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    steps = (1.0,) if len(decades) > 5 else (1.0, 2.0, 5.0)
    candidates = sorted(round(m * 10.0**e, 12) for e in decades for m in steps)
    below = [t for t in candidates if t <= low]
    above = [t for t in candidates if t >= high]
    first = below[-1] if below else candidates[0]
    last = above[0] if above else candidates[-1]
    if first == last:  # a single value on a tick: one step each side
        i = candidates.index(first)
        first, last = candidates[max(i - 1, 0)], candidates[min(i + 1, len(candidates) - 1)]
        if first == last:
            first, last = first / 2, last * 2
    ticks = [t for t in candidates if first <= t <= last] or [first, last]
    if len(ticks) < 4:  # a narrow range: every whole multiple of its powers of ten, still each labelled with its value
        every = sorted(round(m * 10.0**e, 12) for e in decades for m in range(1, 10))
        ticks = [t for t in every if first <= t <= last]
    return ticks


def tick_label(value: float) -> str:
    return f"{value:g}"


def plotted(rows: list[Row]) -> tuple[list[Row], list[Row], list[Row]]:
    """The rows each kind of plot shows: bars (a model cell with a speed), quality against speed, and energy."""
    done = [r for r in rows if r.get("docs_per_sec") and not r.baseline]
    scored = [r for r in rows if r.usable]
    return done, scored, [r for r in scored if r.get("energy_per_doc_j") is not None]


def write_plots(rows: list[Row], title_suffix: str, folder: Path, left_out: list[str] | None = None) -> list[Path]:
    """The PNG plots into `folder`; none where matplotlib is missing, and labels left where they are without adjustText
    (each said once in `left_out`, with how to get it)."""
    left_out = [] if left_out is None else left_out
    try:
        import matplotlib
    except ImportError:
        left_out.append("plots/*.png: matplotlib is not installed (pip install matplotlib)")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    folder.mkdir(parents=True, exist_ok=True)
    done, scored, measured_energy = plotted(rows)
    written = []
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: tick_label(v))

    def log_axis(axis: Any, values: list[float], set_limits: Any) -> None:
        ticks = log_ticks(values)
        axis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
        axis.set_major_formatter(plain)
        axis.set_minor_locator(matplotlib.ticker.NullLocator())
        if ticks:
            set_limits(ticks[0], ticks[-1])

    def bars(values: list[float], labels: list[str], ylabel: str, title: str, name: str, log: bool = False,
             spread: list[tuple[float, float]] | None = None) -> None:  # fmt: skip
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.5))
        if log:
            ax.set_yscale("log")
        ax.bar(labels, values, color="#4C72B0")
        if spread and any(lo != hi for lo, hi in spread):  # the range over repeated timed loops
            ax.errorbar(range(len(values)), values, fmt="none", ecolor="black", capsize=3,
                        yerr=[[v - lo for v, (lo, _) in zip(values, spread, strict=True)],
                              [hi - v for v, (_, hi) in zip(values, spread, strict=True)]])  # fmt: skip
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n{title_suffix}", fontsize=10, wrap=True)
        if log:
            log_axis(ax.yaxis, [*values, *(x for pair in spread or [] for x in pair)], ax.set_ylim)
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
        speeds = [r.get("docs_per_sec") for r in done]
        spread = [(r.get("docs_per_sec_min") or v, r.get("docs_per_sec_max") or v) for r, v in zip(done, speeds, strict=True)]
        bars(speeds, labels, "documents per second (log scale)", "Throughput per cell (bars: range of repeats)",
             "docs_per_sec.png", log=True, spread=spread)  # fmt: skip
        timed, untimed = measured(done, "run_s")
        if timed:
            bars([r.get("run_s") for r in timed], [r.cell for r in timed], "run time (s)",
                 "Document loop time per cell (load excluded)" + unmeasured_note(untimed), "run_time.png")  # fmt: skip
        key, what = memory_measure(done)
        held, unknown = measured(done, key)
        if held:
            bars([r.get(key) / 2**30 for r in held], [r.cell for r in held], what,
                 "Peak memory per cell" + unmeasured_note(unknown), "peak_memory.png")  # fmt: skip
    if scored:
        fig, ax = plt.subplots(figsize=(7, 5))
        front = {r.cell for r in pareto(rows)}
        points = sorted(scored, key=lambda r: r.get("docs_per_sec"))
        for r in points:
            color = "#C44E52" if r.cell in front else "#4C72B0"
            ax.scatter(r.get("docs_per_sec"), r.get("rouge1"), s=60, color=color, zorder=3)
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
        log_axis(ax.xaxis, [r.get("docs_per_sec") for r in points], ax.set_xlim)
        ax.set_xlabel("documents per second (log scale)")
        ax.set_ylabel("ROUGE-1 F1")
        ax.set_title(f"Quality against speed\n{title_suffix}", fontsize=10, wrap=True)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        _place_labels(ax, [(r.cell, r.get("docs_per_sec"), r.get("rouge1")) for r in points], left_out)
        path = folder / "rouge1_vs_docs_per_sec.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    if measured_energy:
        fig, ax = plt.subplots(figsize=(7, 5))
        for r in measured_energy:
            ax.scatter(r.get("energy_per_doc_j"), r.get("rouge1"), s=60, color="#55A868", zorder=3)
        ax.set_xlabel("energy per document (J, the document loop)")
        ax.set_ylabel("ROUGE-1 F1")
        ax.set_title(f"Quality against energy\n{title_suffix}", fontsize=10, wrap=True)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _place_labels(ax, [(r.cell, r.get("energy_per_doc_j"), r.get("rouge1")) for r in measured_energy], left_out)
        path = folder / "rouge1_vs_energy.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def _place_labels(ax: Any, points: list[tuple[str, float, float]], left_out: list[str] | None = None) -> list[Any]:
    """Label each point, then let adjustText move the labels apart (and off the points), with a thin line back to
    their point: close cells would otherwise print over each other. Without adjustText the labels stay where they are
    (said once in `left_out`)."""
    texts = [ax.text(x, y, label, fontsize=8) for label, x, y in points]
    try:
        from adjustText import adjust_text
    except ImportError:
        note = "labels of close points in the PNG plots not moved apart: adjustText is not installed (pip install adjustText)"
        if left_out is not None and note not in left_out:
            left_out.append(note)
        return texts
    if texts:
        xs, ys = [x for _, x, _ in points], [y for _, _, y in points]
        adjust_text(texts, x=xs, y=ys, ax=ax, arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.5})
    return texts
