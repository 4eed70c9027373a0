"""`llmopt report` over load-test folders: each test's levels beside the first's, with the ratio per level.

Levels are matched by payload bin and load (concurrency or rate); a level only one test ran shows without a ratio.
A ratio is the other test's figure over the first's: above 1 is more throughput, or more latency.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError

# (column, how to read it from a level, what a higher ratio means)
FIGURES: tuple[tuple[str, Any], ...] = (
    ("requests_per_s", lambda lv: lv.get("requests_per_s")),
    ("output_tokens_per_s", lambda lv: lv.get("output_tokens_per_s")),
    ("total_tokens_per_s", lambda lv: lv.get("total_tokens_per_s")),
    ("peak_output_tokens_per_s", lambda lv: lv.get("peak_output_tokens_per_s")),
    ("ttft_s_mean", lambda lv: lv["ttft_s"].get("mean")),
    ("ttft_s_p50", lambda lv: lv["ttft_s"]["p50"]),
    ("ttft_s_p95", lambda lv: lv["ttft_s"]["p95"]),
    ("ttfo_s_p50", lambda lv: (lv.get("ttfo_s") or {}).get("p50")),
    ("e2e_s_p50", lambda lv: lv["e2e_s"]["p50"]),
    ("e2e_s_p95", lambda lv: lv["e2e_s"]["p95"]),
    ("tpot_ms_mean", lambda lv: lv["tpot_ms"].get("mean")),
    ("tpot_ms_p50", lambda lv: lv["tpot_ms"]["p50"]),
    ("error_rate", lambda lv: lv.get("error_rate")),
)


def is_loadtest(folder: Path) -> bool:
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "load" in summary and "levels" in summary


def _load(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def _key(level: dict[str, Any], mode: str) -> tuple[str, float]:
    return level["bin"], float(level[mode])


# What makes two tests' figures incomparable however their levels pair up: (name, how to read it from a summary).
WORKLOAD: tuple[tuple[str, Any], ...] = (
    ("model", lambda s: s["target"].get("model")),
    ("api", lambda s: s["target"].get("api")),
    ("stream", lambda s: s["target"].get("stream")),
    ("max_tokens", lambda s: s["load"].get("max_tokens")),
    ("ignore_eos", lambda s: s["load"].get("ignore_eos")),
    ("dataset", lambda s: s["payloads"].get("source")),
    ("prompt", lambda s: s["payloads"].get("prompt")),
    ("burstiness", lambda s: s["load"].get("burstiness")),
    ("turns", lambda s: s["load"].get("turns")),
    ("shared_prefix_tokens", lambda s: s["payloads"].get("shared_prefix_tokens")),
)


def workload_warnings(folders: list[Path]) -> list[str]:
    """One line per workload setting that differs between the tests (the baseline's value first)."""
    summaries = [_load(f) for f in folders]
    warnings = []
    for name, read in WORKLOAD:
        values = [read(s) for s in summaries]
        if len({repr(v) for v in values}) > 1:
            each = ", ".join(f"{f.name} {v!r}" for f, v in zip(folders, values, strict=True))
            warnings.append(f"{name} differs ({each}): the figures do not measure the same work")
    return warnings


def compare(folders: list[Path]) -> tuple[list[dict[str, Any]], str]:
    """One row per (test, level) with each figure and its ratio to the first test's same level."""
    summaries = [_load(f) for f in folders]
    modes = {s["load"]["mode"] for s in summaries}
    if len(modes) > 1:
        raise UsageError("these load tests loaded the server differently (concurrency and rate): nothing to pair")
    mode = modes.pop()
    base = {_key(lv, mode): lv for lv in summaries[0]["levels"]}
    rows = []
    for folder, summary in zip(folders, summaries, strict=True):
        for lv in summary["levels"]:
            ref = base.get(_key(lv, mode))
            row: dict[str, Any] = {"test": folder.name, "bin": lv["bin"], mode: lv[mode],
                                   "client_bound": (lv.get("client") or {}).get("client_bound")}  # fmt: skip
            for name, read in FIGURES:
                value = read(lv)
                row[name] = value
                other = read(ref) if ref is not None else None
                row[f"{name}_ratio"] = value / other if value is not None and other else None
            rows.append(row)
    return rows, mode


SHOWN = (("requests_per_s", ".2f"), ("output_tokens_per_s", ".1f"), ("total_tokens_per_s", ".1f"),
         ("ttft_s_mean", ".3f"), ("ttft_s_p50", ".3f"), ("ttft_s_p95", ".3f"), ("ttfo_s_p50", ".3f"),
         ("e2e_s_p50", ".3f"), ("e2e_s_p95", ".3f"), ("tpot_ms_mean", ".1f"), ("tpot_ms_p50", ".1f"))  # fmt: skip


def _f(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def write(folders: list[Path], out: Path) -> Path:
    rows, mode = compare(folders)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "loadtest_comparison.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["test"])
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Load tests compared",
        "",
        f"Baseline: {folders[0].name} ({folders[0]}). Others: " + ", ".join(f"{f.name} ({f})" for f in folders[1:]) + ".",
        f"Levels paired by bin and {mode}; × is the test's figure over the baseline's at the same level "
        "(throughput: higher is better; latency and errors: lower is better). † the client was the bottleneck.",
        "",
        *[f"**Warning**: {w}.\n" for w in workload_warnings(folders)],
        f"| test | bin | {mode} | req/s | × | out tok/s | × | total tok/s | × | TTFT mean s | × | TTFT p50 s | × "
        "| TTFT p95 s | × | TTFO p50 s | × | e2e p50 s | × | e2e p95 s | × | TPOT mean ms | × | TPOT p50 ms | × "
        "| error rate |",
        "|---" * (4 + 2 * len(SHOWN)) + "|",
    ]
    for r in rows:
        cells = [f"{r['test']}{'†' if r['client_bound'] else ''}", r["bin"], f"{r[mode]:g}"]
        for name, spec in SHOWN:
            cells += [_f(r[name], spec), _f(r[f"{name}_ratio"], ".2f")]
        cells.append(_f(r["error_rate"], ".1%"))
        lines.append("| " + " | ".join(cells) + " |")
    path = out / "loadtest_comparison.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
