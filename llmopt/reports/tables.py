"""The report's tables: the main one (one row per run, published figures beside), quality against the reference,
the study's failure table, the runs this machine could not do, and summary.csv with every summary field."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llmopt.quality.paired import PairedDelta
from llmopt.reports.rows import Row, strategy_label

Table = tuple[list[str], list[list[str]]]  # a table's head and its rows of cells, for report.md and report.html alike


def markdown(table: Table) -> str:
    head, cells = table
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(c) + " |" for c in cells)])


def _num(value: Any, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _mib(value: Any) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f}"


def _speed(r: Row) -> str:
    """docs/s, with the range over repeated timed loops where there were several."""
    low, high = r.get("docs_per_sec_min"), r.get("docs_per_sec_max")
    spread = f" ({low:.3f}–{high:.3f})" if low is not None and high is not None else ""
    return _num(r.get("docs_per_sec")) + spread


def hardware_table(rows: list[Row]) -> str | None:
    """The same cells on each GPU type of the experiment, side by side: docs/s and cost per 1M output tokens at the
    type's price per hour (generation time only). None where no row has a GPU type."""
    table = hardware_cells(rows)
    return None if table is None else markdown(table) + "\n\n" + hardware_note(rows)


def hardware_note(rows: list[Row]) -> str:
    types = list(dict.fromkeys(r.hardware_type for r in rows if r.hardware_type))
    prices = [f"{t} ${p:g}/h" for t in types if (p := next((r.price_per_hour for r in rows if r.hardware_type == t), None))]
    return f"Prices per hour: {', '.join(prices)}." if prices else "No price per hour in the experiment: no cost."


def hardware_cells(rows: list[Row]) -> Table | None:
    from llmopt.reports.recommend import cost_per_million_tokens

    types = list(dict.fromkeys(r.hardware_type for r in rows if r.hardware_type))
    if not types:
        return None
    by_cell: dict[str, dict[str, Row]] = {}
    for r in rows:
        if r.hardware_type and not r.baseline:
            by_cell.setdefault(r.cell.rpartition("@")[0], {})[r.hardware_type] = r
    head = ["cell", *(f"{t} {what}" for t in types for what in ("docs/s", "$/1M out tok"))]
    lines = []
    for cell, of_type in by_cell.items():
        cells = [cell]
        for t in types:
            r = of_type.get(t)
            if r is None or not r.get("docs_per_sec"):
                cells += [str(r.get("status")) if r else "–", "–"]
                continue
            price = r.price_per_hour
            cost = cost_per_million_tokens(r, price) if price else None
            cells += [_speed(r), "–" if cost is None else f"${cost:.3g}"]
        lines.append(cells)
    return head, lines


def main_table(rows: list[Row]) -> str:
    return markdown(main_cells(rows))


def main_cells(rows: list[Row]) -> Table:
    several_machines = len({r.hardware for r in rows if r.get("device")}) > 1
    published = any(r.published for r in rows)
    head = ["cell", *(["hardware"] if several_machines else []), "strategy", "batch", "docs/s", "% roofline", "run s"]
    head += ["load s", "out tok/s", "GPU MiB model / device reserved", "peak RSS MiB", "J/doc", "OOM / skipped"]
    head += ["ROUGE-1 [95% CI]", "status"]
    if published:
        head += ["published docs/s", "published total s", "published ROUGE-1", "docs/s ours ÷ published"]
    lines = []
    for r in rows:
        ci = r.get("rouge1_ci95")
        rouge = "–" if r.get("rouge1") is None else f"{r.get('rouge1'):.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"
        if r.get("rouge_note"):
            rouge = "n/a (" + r.get("rouge_note").split(": ", 1)[-1] + ")"
        batch = "engine" if r.get("batching") == "engine" else str(r.batch_size)
        if r.batch_size == "auto":
            batch = f"auto → {r.get('batch_size')}" if r.get("batch_size") else "auto"
        # The model's own figure (allocator peak, or an engine's weights + KV cache) beside what the device held
        # for the run (NVML, idle use subtracted); older summaries: the allocator's and the device's raw figures.
        alloc = r.get("gpu_memory_bytes") or r.get("peak_gpu_mem_bytes")
        device = r.get("peak_gpu_device_reserved_bytes") or r.get("peak_gpu_device_used_bytes")
        cells = [r.cell, *([r.hardware] if several_machines else []), strategy_label(r.strategy), batch, _speed(r)]
        cells += [_num(r.get("pct_of_roofline"), ".1f"), _num(r.get("run_s"), ".1f"), _num(r.get("load_s"), ".1f")]
        cells += [_num(r.get("output_tokens_per_s"), ".1f")]
        cells += [f"{_mib(alloc)} / {_mib(device)}" if alloc or device else "–", _mib(r.get("peak_rss_bytes"))]
        # Counted by a run that went through its documents; a cell not run (or that could not start) counted none.
        counted = r.get("n_oom") is not None or r.get("n_skipped") is not None
        failures = f"{r.get('n_oom') or 0} / {r.get('n_skipped') or 0}" if counted else "–"
        cells += [_num(r.get("energy_per_doc_j"), ".3g"), failures]
        cells += [rouge, str(r.get("status"))]
        if published:
            p = r.published
            if p:
                ours = r.get("docs_per_sec")
                ratio = f"{ours / float(p['docs_per_sec']):.2f}×" if ours else "–"
                cells += [p["docs_per_sec"], p["total_time_s"], p["rouge1"], ratio]
            else:
                cells += ["–"] * 4
        lines.append(cells)
    return head, lines


def _delta(d: PairedDelta | None) -> str:
    return "–" if d is None else f"{d.delta:+.4f} [{d.low:+.4f}, {d.high:+.4f}]"


def quality_table(rows: list[Row]) -> str | None:
    """Against the reference, document by document: paired ROUGE differences, output agreement, the gate, drift."""
    table = quality_cells(rows)
    return None if table is None else markdown(table)


def quality_cells(rows: list[Row]) -> Table | None:
    """Each row compared with its reference, and the reference itself where drift was measured for it; the drift
    columns where `llmopt drift` ran for these results, with what each figure measured or why it is blank."""
    drifted = any(r.quality.get("drift_run") for r in rows)
    compared = [
        r for r in rows
        if r.quality.get("rouge1") is not None or r.quality.get("drift")
        or (drifted and r.quality.get("is_reference") and r.quality.get("drift_run"))
    ]  # fmt: skip
    if not compared:
        return None
    head = ["cell", "reference", "ΔROUGE-1 [95% CI]", "ΔROUGE-2", "ΔROUGE-L", "ROUGE-1 ratio [95% CI]", "same output"]
    head += ["gate (≥ 99%)"]
    if drifted:
        head += ["KL mean", "KL p99", "top-1 agreement", "perplexity", "drift of"]
    lines = []
    for r in compared:
        q = r.quality
        d1 = q.get("rouge1")
        ratio = "–" if d1 is None or d1.ratio is None else f"{d1.ratio:.3f} [{d1.ratio_low:.3f}, {d1.ratio_high:.3f}]"
        agreement = q.get("agreement")
        reference = "itself" if q.get("is_reference") else q.get("reference", "–")
        cells = [r.cell, reference, _delta(d1), _delta(q.get("rouge2")), _delta(q.get("rougeL")), ratio]
        cells += ["–" if agreement is None else f"{agreement:.0%}", q.get("gate") or "–"]
        if drifted:
            drift = q.get("drift") or {}
            cells += [_num(drift.get("kl_mean"), ".4g"), _num(drift.get("kl_p99"), ".4g")]
            cells += [_num(drift.get("top1_agreement"), ".3f"), _num(drift.get("perplexity"), ".3f")]
            cells += [(q.get("drift_of") or "–").replace("|", "/")]
        lines.append(cells)
    return head, lines


def failures_table(rows: list[Row]) -> str:
    """The study's failure table (strategy, GPU, batch size, error, documents), from what the runs recorded."""
    table = failures_cells(rows)
    return "No out-of-memory errors, skipped documents or failed cells." if table is None else markdown(table)


def failures_cells(rows: list[Row]) -> Table | None:
    entries = []
    for r in rows:
        for event in r.get("oom_events") or []:
            if event.get("stage") == "load":
                entries.append((r, r.batch_size, "OutOfMemoryError while loading the model", len(event["doc_ids"])))
            else:
                entries.append((r, event["batch_size"], "OutOfMemoryError", len(event["doc_ids"])))
        if r.get("n_skipped"):
            entries.append((r, r.batch_size, f"{r.get('n_skipped')} of {r.get('n_docs')} documents skipped", r.get("n_skipped")))
        if r.get("status") == "failed":
            error = "; ".join(r.get("errors") or []) or "failed"
            entries.append((r, r.batch_size, error.replace("|", "/")[:200], r.get("n_docs") or "–"))
    if not entries:
        return None
    lines = []
    for r, b, e, n in entries:
        exp = r.source.experiment
        lines.append([strategy_label(r.strategy), exp.hardware if exp else r.hardware, str(b), e, str(n)])
    return ["strategy", "GPU", "batch size", "error", "documents"], lines


def unavailable_table(rows: list[Row]) -> str | None:
    """Cells this machine cannot run (a missing package, no GPU, no int4 kernel): not failures, and not measured."""
    table = unavailable_cells(rows)
    return None if table is None else markdown(table)


def unavailable_cells(rows: list[Row]) -> Table | None:
    absent = [r for r in rows if r.get("status") == "unavailable"]
    if not absent:
        return None
    why = ["; ".join(r.get("errors") or []).replace("|", "/") for r in absent]
    return ["cell", "strategy", "why"], [[r.cell, strategy_label(r.strategy), w] for r, w in zip(absent, why, strict=True)]


def write_csv(rows: list[Row], path: Path) -> None:
    keys: list[str] = ["cell", "source", "hardware"]
    for r in rows:
        keys += [k for k in r.summary if k not in keys]
    quality_keys = ["gate", "agreement", "delta_rouge1", "delta_rouge1_low", "delta_rouge1_high"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys + quality_keys)
        writer.writeheader()
        for r in rows:
            flat = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in r.summary.items()}
            d1 = r.quality.get("rouge1")
            extra = {"gate": r.quality.get("gate"), "agreement": r.quality.get("agreement"),
                     "delta_rouge1": d1.delta if d1 else None, "delta_rouge1_low": d1.low if d1 else None,
                     "delta_rouge1_high": d1.high if d1 else None}  # fmt: skip
            writer.writerow({"cell": r.cell, "source": r.source.name, "hardware": r.hardware, **flat, **extra})
