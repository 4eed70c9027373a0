"""A load test's summary.csv, report.md and plots, from its summary."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from llmopt.serving import report_observed

STAT_KEYS = ("ttft_s", "ttfo_s", "e2e_s", "tpot_ms", "itl_ms", "failed_ttft_s")
SCALAR_KEYS = (
    "bin", "concurrency", "rate", "requests", "completed", "errors", "error_rate", "requests_per_s",
    "transactions_per_minute", "output_tokens_per_s", "input_tokens_per_s", "total_tokens_per_s",
    "peak_output_tokens_per_s", "peak_concurrency", "prompt_tokens_mean", "output_tokens_mean", "window_s",
    "price_per_transaction", "price_per_10k_transactions", "price_per_1m_output_tokens",
    "cut_off", "not_sent", "outside_window", "interrupted", "short_answers", "short_answers_checked",
    "good_requests", "good_share", "goodput_requests_per_s", "cached_share", "payload_repeats", "prompts_made_late",
)  # fmt: skip


def flat(level: dict[str, Any]) -> dict[str, Any]:
    row = {k: level.get(k) for k in SCALAR_KEYS}
    for key in STAT_KEYS:
        for q, value in (level.get(key) or {}).items():
            row[f"{key}_{q}"] = value
    row["error_kinds"] = ";".join(f"{k}={v}" for k, v in level["error_kinds"].items())
    row.update(report_observed.flat(level))
    return row


def _f(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def levels_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The levels' table, head and cells, for report.md and report.html alike: the means first (vLLM's headline),
    then the tail; a dash where nothing was measured (report.md says why below the table)."""
    mode = summary["load"]["mode"]
    head = ["bin", mode, "ok / sent", "error rate", "req/s", "txn/min", "out tok/s (peak)", "in / total tok/s",
            "peak in flight", "TTFT mean / p50 / p99 s", "TTFO p50 s", "TPOT mean / p50 / p99 ms", "ITL p50 / p99 ms",
            "e2e mean / p50 / p95 / p99 s", "$ per 10k txn", "$ per 1M out tok"]  # fmt: skip
    body = []
    for lv in summary["levels"]:
        e2e, ttft, itl, tpot = lv["e2e_s"], lv["ttft_s"], lv["itl_ms"], lv["tpot_ms"]
        ttfo = lv.get("ttfo_s") or {}
        kinds = ", ".join(f"{k} {v}" for k, v in lv["error_kinds"].items())
        mark = report_observed.CLIENT_MARK if (lv.get("client") or {}).get("client_bound") else ""
        ended = " (interrupted)" if lv.get("interrupted") else " (over-saturated)" if lv.get("saturated") else ""
        body.append([
            f"{lv['bin']}{mark}", f"{lv[mode]:g}{ended}", f"{lv['completed']} / {lv['requests']}",
            _f(lv["error_rate"], ".1%") + (f" ({kinds})" if kinds else ""), _f(lv["requests_per_s"], ".2f"),
            _f(lv["transactions_per_minute"], ".0f"),
            f"{_f(lv['output_tokens_per_s'], '.1f')} ({_f(lv.get('peak_output_tokens_per_s'), '.0f')})",
            f"{_f(lv.get('input_tokens_per_s'), '.1f')} / {_f(lv.get('total_tokens_per_s'), '.1f')}",
            _f(lv.get("peak_concurrency"), "d"),
            f"{_f(ttft.get('mean'))} / {_f(ttft['p50'])} / {_f(ttft['p99'])}", _f(ttfo.get("p50")),
            f"{_f(tpot.get('mean'), '.1f')} / {_f(tpot['p50'], '.1f')} / {_f(tpot['p99'], '.1f')}",
            f"{_f(itl['p50'], '.1f')} / {_f(itl['p99'], '.1f')}",
            f"{_f(e2e.get('mean'))} / {_f(e2e['p50'])} / {_f(e2e['p95'])} / {_f(e2e['p99'])}",
            _f(lv["price_per_10k_transactions"], ".4f"), _f(lv["price_per_1m_output_tokens"], ".3f"),
        ])  # fmt: skip
    return head, body


def blank_lines(summary: dict[str, Any], mode: str) -> list[str]:
    """Why figures are blank, each reason once with its figures and levels."""
    reasons: dict[str, dict[str, list[str]]] = {}
    for lv in summary["levels"]:
        for figure, why in (lv.get("not_measured") or {}).items():
            reasons.setdefault(why, {}).setdefault(figure, []).append(f"{lv['bin']} {mode} {lv[mode]:g}")
    lines = []
    for why, figures in reasons.items():
        levels = sorted({lv for where in figures.values() for lv in where})
        where = "every level" if len(levels) == len(summary["levels"]) else ", ".join(levels)
        lines.append(f"- {', '.join(figures)}: {why} ({where})")
    return ["", "Not measured (blank above):", *lines] if lines else []


def write(out: Path, summary: dict[str, Any], plots: bool = True) -> Path:
    levels = summary["levels"]
    rows = [flat(level) for level in levels]
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as f:
        fields = list(dict.fromkeys(k for row in rows for k in row)) if rows else list(SCALAR_KEYS)
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    mode = summary["load"]["mode"]
    target = summary["target"]
    head, body = levels_table(summary)
    lines = [
        f"# Load test: {target['model']}",
        "",
        f"Target: {target['endpoint']}, {target['api']} API, {'streaming' if target['stream'] else 'not streaming'}. "
        f"Load: {mode} {', '.join(f'{v:g}' for v in summary['load']['levels'])}; "
        + (
            f"{summary['load']['requests']} measured requests"
            if summary["load"]["requests"]
            else f"{summary['load']['duration_s']} s"
        )
        + f" per level, {summary['load']['max_tokens']} new tokens at most. Payloads: {summary['payloads']['source']}."
        + (f" Seed {summary['load']['seed']}." if summary["load"].get("seed") is not None else ""),
        *[f"\nDefault: {line}." for line in summary["payloads"].get("defaults_chosen") or []],
        "",
        "## Recommendation",
        "",
        f"Latency budget: p95 end-to-end ≤ {summary['latency_budget_s']} s; error budget: {summary['error_budget']:.1%}.",
        "",
        *[f"- {rec['statement']}" for rec in summary["recommendation"]],
        "",
        "## Levels",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(cells) + " |" for cells in body),
    ]
    lines += blank_lines(summary, mode)
    for stop in summary["stopped_early"]:
        lines.append(f"\nNot run: {stop['bin']} at {mode} {stop[mode]:g}: {stop['reason']}.")
    if summary.get("interrupted"):
        lines.append("\n**Interrupted**: the level marked (interrupted) ended early; its figures cover the requests "
                     "answered before the interrupt (those in flight are left out).")  # fmt: skip
    lines += serving_lines(summary, mode)
    if any((lv.get("client") or {}).get("client_bound") for lv in levels):
        lines.append(
            f"\n{report_observed.CLIENT_MARK} client-bound: the load generator, not only the server, limited this level."
        )
    lines += report_observed.sections(out, summary, plots)
    load = summary["load"]
    steady = (
        f" sent at least {load.get('warmup_s', 0):g} s after a level's first send and ended at least "
        f"{load.get('cooldown_s', 0):g} s before its last end (the steady-state window)"
        if load.get("warmup_s") or load.get("cooldown_s")
        else ""
    )
    lines += [
        "",
        f"Definitions (docs/loadtest.md): figures over the measured requests{steady}, warm-up and cut-off ones "
        "left out; an arrival never sent (not_sent) counts as a failed request. TTFT: send to the first chunk with "
        "choices, reasoning included; TTFO (time to first output token): to the first chunk of the answer itself; "
        "e2e: send to the last chunk with choices; TPOT = (e2e − TTFT) / (output tokens − 1); ITL over every gap "
        "between chunks; std of the population; req/s and tok/s over the window from the first counted send to the "
        "last counted end; peak tok/s: the most output tokens in one 1 s bucket; peak in flight: the most requests "
        "at one instant; cost = price per hour / requests (or tokens) per hour.",
    ]
    if plots and levels:
        lines += [
            "",
            *[f"![{p.stem}](plots/{p.name})" for p in write_plots(out / "plots", levels, mode, summary["latency_budget_s"])],
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def serving_lines(summary: dict[str, Any], mode: str) -> list[str]:
    """Goodput against the SLOs, the search's verdict, the server going away, and warnings, where there are any."""
    lines = []
    if summary.get("slo"):
        lines += ["", f"## Goodput (SLOs {summary['slo']})", ""]
        for lv in summary["levels"]:
            verdict = lv.get("verdict")
            judged = ""
            if verdict is not None:
                judged = " — pass" if verdict["passed"] else " — fail: " + "; ".join(verdict["reasons"])
            rate = _f(lv["goodput_requests_per_s"], ".2f")
            lines.append(f"- {lv['bin']} {mode} {lv[mode]:g}: {lv['good_requests']} good of {lv['requests']} "
                         f"({_f(lv['good_share'], '.0%')}), {rate} good req/s{judged}")  # fmt: skip
    for search in summary.get("search") or []:
        lines += ["", f"Search: {search['statement']}."]
    if summary.get("server_gone"):
        gone = summary["server_gone"]
        lines += ["", f"**Incomplete**: the server went away at {gone['utc']}, {gone['at_s']:.1f} s into {gone['bin']} "
                  f"{mode} {gone[mode]:g} ({gone['how']}); the levels before it are complete."]  # fmt: skip
    if summary.get("warnings"):
        lines += ["", "Warnings:", *[f"- {w}" for w in summary["warnings"]]]
    return lines


def write_plots(folder: Path, levels: list[dict[str, Any]], mode: str, budget: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    bins = list(dict.fromkeys(lv["bin"] for lv in levels))
    paths = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        paths.append(folder / name)

    fig, ax = plt.subplots(figsize=(6, 4))
    for b in bins:
        rows = [lv for lv in levels if lv["bin"] == b]
        for q, style in (("p50", "-o"), ("p95", "--s")):
            ax.plot([lv[mode] for lv in rows], [lv["e2e_s"][q] for lv in rows], style, label=f"{b} {q}")
    ax.axhline(budget, color="red", lw=1, label="budget")
    ax.set(xlabel=mode, ylabel="end-to-end latency (s)", title="Latency against load")
    ax.legend(fontsize=7)
    save(fig, "latency_vs_load.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for b in bins:
        rows = [lv for lv in levels if lv["bin"] == b]
        ax.plot([lv["e2e_s"]["p95"] for lv in rows], [lv["output_tokens_per_s"] for lv in rows], "-o", label=b)
        for lv in rows:
            ax.annotate(f"{lv[mode]:g}", (lv["e2e_s"]["p95"] or 0, lv["output_tokens_per_s"] or 0), fontsize=7)
    ax.axvline(budget, color="red", lw=1, label="latency budget")
    ax.set(xlabel="p95 end-to-end latency (s)", ylabel="output tokens/s", title="Throughput against latency")
    ax.legend(fontsize=7)
    save(fig, "tokens_vs_latency.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [f"{lv['bin']}\n{lv[mode]:g}" for lv in levels]
    ax.bar(range(len(levels)), [100 * (lv["error_rate"] or 0) for lv in levels], color="tab:red")
    ax.set_xticks(range(len(levels)), labels, fontsize=7)
    ax.set(ylabel="error rate (%)", title=f"Errors per level ({mode})")
    save(fig, "error_rate.png")

    priced = [lv for lv in levels if lv["price_per_10k_transactions"] is not None]
    if priced:
        fig, ax = plt.subplots(figsize=(6, 4))
        for b in bins:
            rows = [lv for lv in priced if lv["bin"] == b]
            ax.plot([lv["e2e_s"]["p95"] for lv in rows], [lv["price_per_10k_transactions"] for lv in rows], "-o", label=b)
        ax.axvline(budget, color="red", lw=1)
        ax.set(xlabel="p95 end-to-end latency (s)", ylabel="USD per 10k transactions", title="Cost against latency")
        ax.legend(fontsize=7)
        save(fig, "cost_vs_latency.png")
    return paths
