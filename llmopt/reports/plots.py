"""The report's plots: docs/s per cell (with the range of repeated loops), run time, peak memory, quality against
speed with its Pareto front, and energy per document against quality."""

from __future__ import annotations

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


def plotted(rows: list[Row]) -> tuple[list[Row], list[Row], list[Row]]:
    """The rows each kind of plot shows: bars (a model cell with a speed), quality against speed, and energy."""
    done = [r for r in rows if r.get("docs_per_sec") and not r.baseline]
    scored = [r for r in rows if r.usable]
    return done, scored, [r for r in scored if r.get("energy_per_doc_j") is not None]


def write_plots(rows: list[Row], title_suffix: str, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    folder.mkdir(parents=True, exist_ok=True)
    done, scored, measured = plotted(rows)
    written = []

    def bars(values: list[float], labels: list[str], ylabel: str, title: str, name: str, log: bool = False,
             spread: list[tuple[float, float]] | None = None) -> None:  # fmt: skip
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.5))
        ax.bar(labels, values, color="#4C72B0")
        if spread and any(lo != hi for lo, hi in spread):  # the range over repeated timed loops
            ax.errorbar(range(len(values)), values, fmt="none", ecolor="black", capsize=3,
                        yerr=[[v - lo for v, (lo, _) in zip(values, spread, strict=True)],
                              [hi - v for v, (_, hi) in zip(values, spread, strict=True)]])  # fmt: skip
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}\n{title_suffix}", fontsize=10, wrap=True)
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
        speeds = [r.get("docs_per_sec") for r in done]
        spread = [(r.get("docs_per_sec_min") or v, r.get("docs_per_sec_max") or v) for r, v in zip(done, speeds, strict=True)]
        bars(speeds, labels, "documents per second (log scale)", "Throughput per cell (bars: range of repeats)",
             "docs_per_sec.png", log=True, spread=spread)  # fmt: skip
        bars(
            [r.get("run_s") or 0.0 for r in done],
            labels,
            "run time (s)",
            "Document loop time per cell (load excluded)",
            "run_time.png",
        )
        key, what = memory_measure(done)
        memory = [r.get(key) or 0 for r in done]
        bars([m / 2**30 for m in memory], labels, what, "Peak memory per cell", "peak_memory.png")
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
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        # Minor ticks at 2 and 5 only, in plain numbers: matplotlib's default labels of all eight print over each other.
        ax.xaxis.set_minor_locator(matplotlib.ticker.LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(plain)
        ax.set_xlabel("documents per second (log scale)")
        ax.set_ylabel("ROUGE-1 F1")
        ax.set_title(f"Quality against speed\n{title_suffix}", fontsize=10, wrap=True)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        _place_labels(ax, [(r.cell, r.get("docs_per_sec"), r.get("rouge1")) for r in points])
        path = folder / "rouge1_vs_docs_per_sec.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    if measured:
        fig, ax = plt.subplots(figsize=(7, 5))
        for r in measured:
            ax.scatter(r.get("energy_per_doc_j"), r.get("rouge1"), s=60, color="#55A868", zorder=3)
        ax.set_xlabel("energy per document (J, the document loop)")
        ax.set_ylabel("ROUGE-1 F1")
        ax.set_title(f"Quality against energy\n{title_suffix}", fontsize=10, wrap=True)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _place_labels(ax, [(r.cell, r.get("energy_per_doc_j"), r.get("rouge1")) for r in measured])
        path = folder / "rouge1_vs_energy.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def _place_labels(ax: Any, points: list[tuple[str, float, float]]) -> list[Any]:
    """Label each point, then let adjustText move the labels apart (and off the points), with a thin line back to
    their point: close cells would otherwise print over each other."""
    from adjustText import adjust_text

    texts = [ax.text(x, y, label, fontsize=8) for label, x, y in points]
    if texts:
        xs, ys = [x for _, x, _ in points], [y for _, _, y in points]
        adjust_text(texts, x=xs, y=ys, ax=ax, arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.5})
    return texts
