"""The report's tables: the main one (one row per cell, published figures beside), the study's failure table, the
cells this machine could not run, and summary.csv with every summary field."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llmopt.reports.rows import Row, strategy_label
from llmopt.sweeps import experiment


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
