"""Quality beside speed in a report: each row against a reference row of the same source, document by document.

The reference is the experiment's `reference` cell (of the same GPU type, where the experiment runs on several), or
else the transformers cell of highest precision at batch 1 (default, sdpa, flash-attn or compile; float32 before
16-bit). Every other row that produced summaries gets its ROUGE-1/2/L differences with paired 95% intervals, its
output agreement, MLPerf's gate (ROUGE-1, -2 and -L at least 99% of the reference's) and, where `llmopt drift` ran for the
source, its drift figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmopt.quality import paired
from llmopt.reports.rows import Row

FULL_PRECISION = ("default", "sdpa", "flash-attn", "compile")
PRECISION = {"float32": 2, "bfloat16": 1, "float16": 1}
KINDS = ("rouge1", "rouge2", "rougeL")
DRIFT_SUMMARY = Path("drift") / "summary.json"


def reference_row(rows: list[Row]) -> Row | None:
    """The row the others of its source are held against."""
    if not rows:
        return None
    exp = rows[0].source.experiment
    if exp is not None and exp.reference:
        named = [r for r in rows if r.folder.name.partition("@")[0] == exp.reference]
        return named[0] if named and named[0].usable else None
    candidates = [
        r for r in rows if r.usable and r.strategy in FULL_PRECISION and r.get("batch_size") in (1, None)
        and r.get("batching") != "engine"
    ]  # fmt: skip
    if not candidates:
        return None
    return max(candidates, key=lambda r: (PRECISION.get(r.get("dtype"), 0), -rows.index(r)))


def _drift(source_path: Path) -> dict[str, dict[str, Any]]:
    path = source_path / DRIFT_SUMMARY
    if not path.is_file():
        return {}
    try:
        return {m["strategy"]: m for m in json.loads(path.read_text()).get("modes", [])}
    except (ValueError, KeyError, TypeError):
        return {}


def _drift_of(row: Row, modes: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The drift measured for this row's mode; a llama.cpp mode's only for the GGUF type it ran (the drift run's
    llamacpp is one type, the report may hold several)."""
    mode = modes.get(row.strategy)
    if mode is None or mode.get("gguf_type") is None:
        return mode
    return mode if (row.get("engine") or {}).get("gguf_type") == mode["gguf_type"] else None


def attach(rows: list[Row]) -> dict[str, Row]:
    """Fill `row.quality` for every row against its source's reference (its GPU type's, where cells run on several
    types: a GPU type's rows are held against a reference that ran on the same type); returns each group's reference."""
    references: dict[str, Row] = {}
    by_source: dict[str, list[Row]] = {}
    for r in rows:
        by_source.setdefault(r.source.name + (f"@{r.hardware_type}" if r.hardware_type else ""), []).append(r)
    for name, group in by_source.items():
        reference = reference_row(group)
        modes = _drift(group[0].source.path)
        if reference is None:
            for r in group:
                r.quality = {"drift": _drift_of(r, modes)} if _drift_of(r, modes) else {}
            continue
        references[name] = reference
        ref_records = reference.completed_records()
        for r in group:
            r.quality = {"reference": reference.cell, "drift": _drift_of(r, modes)}
            if r is reference:
                r.quality["is_reference"] = True
                continue
            if not r.usable:
                continue
            mine = r.completed_records()
            shared = [doc for doc in ref_records if doc in mine]
            for kind in KINDS:
                a = [mine[d].get(kind) for d in shared]
                b = [ref_records[d].get(kind) for d in shared]
                if None in a or None in b:
                    continue
                r.quality[kind] = paired.paired_delta(a, b)
            r.quality["agreement"] = paired.agreement([mine[d]["prediction"] for d in shared],
                                                      [ref_records[d]["prediction"] for d in shared])  # fmt: skip
            r.quality["gate"] = paired.gate([r.quality.get(kind) for kind in KINDS])
            r.quality["n_paired"] = len(shared)
    return references
