"""Quality beside speed in a report: each row against a reference row of the same source, document by document.

The reference is the experiment's `reference` cell (of the same GPU type, where the experiment runs on several), or
else the transformers cell of highest precision at batch 1 (default, sdpa, flash-attn or compile; float32 before
16-bit). Every other row that produced summaries gets its ROUGE-1/2/L differences with paired 95% intervals, its
output agreement, MLPerf's gate (ROUGE-1, -2 and -L at least 99% of the reference's) and, where `llmopt drift` ran for the
source, the drift figures it measured for exactly that row's mode, model, dtype and GGUF type (drift_of).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


@dataclass
class DriftRun:
    """What `llmopt drift` measured for a source (its drift/summary.json): the reference and every mode's figures."""

    path: Path
    reference: dict[str, Any]
    model: str | None
    documents: int | None
    positions: int | None
    modes: list[dict[str, Any]]

    def describe(self) -> str:
        ref = self.reference
        dtype = f" in {ref['dtype']}" if ref.get("dtype") else ""
        return (f"`llmopt drift` (`{self.path}`) against `{ref.get('strategy')}`{dtype} on {self.model}, "
                f"{self.documents} documents, {self.positions} summary positions")  # fmt: skip


def drift_run(source_path: Path) -> DriftRun | None:
    path = source_path / DRIFT_SUMMARY
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return DriftRun(path, dict(data.get("reference") or {}), data.get("model"), data.get("documents"),
                        data.get("positions"), list(data.get("modes") or []))  # fmt: skip
    except (ValueError, TypeError, AttributeError):
        return None


def _gguf(row: Row) -> str | None:
    return (row.get("engine") or {}).get("gguf_type")


def _kv(row: Row) -> str:
    return (row.get("engine") or {}).get("kv_cache_dtype") or "auto"


def drift_of(row: Row, run: DriftRun | None) -> tuple[dict[str, Any] | None, str | None]:
    """The drift figures measured for exactly this row's mode, model, dtype and GGUF type, and what they were
    measured for; or None and why there are none. Never a neighbour's figures: the reference against itself (0) is
    not the drift of the same strategy at another dtype.

    Batch size is not matched. Drift is measured teacher-forced, one document per forward pass (no padding); a cell
    at batch 8 computes the same arithmetic at its dtype over left-padded batches, which changes which 16-bit
    roundings happen, not how large they are. Measured on SmolLM2-135M (4 documents x 64 tokens, bfloat16 against
    float32): KL mean 0.00117 scored alone, 0.00122 scored in a padded batch of 8 (float32: 6e-9 between the two),
    so the figure stands for the mode at its dtype at any batch size; docs/quality.md says so."""
    if run is None:
        return None, "no drift run"
    same = [m for m in run.modes if m.get("strategy") == row.strategy]
    if not same:
        return None, "not in the drift run"
    ok = [m for m in same if m.get("status") == "ok"]
    if not ok:
        m = same[0]
        return None, f"drift {m.get('status')}: {m.get('error', '')}"[:160]
    if any("dtype_requested" not in m for m in ok):  # older drift runs recorded the dtype asked for, not the one run
        return None, "the drift run did not record the dtype each mode ran: run llmopt drift again"
    model = [m for m in ok if m.get("model") == row.get("model")]
    if not model:
        return None, f"not measured: drift ran {row.strategy} on {ok[0].get('model')}, this cell on {row.get('model')}"
    gguf = [m for m in model if m.get("gguf_type") is None or m.get("gguf_type") == _gguf(row)]
    if not gguf:
        return None, f"not measured: drift ran GGUF {model[0].get('gguf_type')}, this cell {_gguf(row)}"
    # A KV cache stored in 8 bits is other arithmetic: its drift is not the 16-bit cache's (and the other way round)
    kv = [m for m in gguf if (m.get("kv_cache_dtype") or "auto") == _kv(row)]
    if not kv:
        return None, f"not measured: drift ran the KV cache in {gguf[0].get('kv_cache_dtype')}, this cell in {_kv(row)}"
    dtype = [m for m in kv if m.get("dtype") == row.get("dtype")]
    if not dtype:
        ran = " and ".join(sorted({str(m.get("dtype")) for m in kv}))
        return None, f"not measured: drift ran {row.strategy} in {ran}, this cell in {row.get('dtype')}"
    mode = min(dtype, key=lambda m: bool(m.get("reference_check")))  # the same figures; a mode's own run first
    what = mode.get("gguf_type") or mode.get("dtype")
    return mode, f"{row.strategy} {what}" if what else row.strategy


def attach(rows: list[Row]) -> dict[str, Row]:
    """Fill `row.quality` for every row against its source's reference (its GPU type's, where cells run on several
    types: a GPU type's rows are held against a reference that ran on the same type); returns each group's reference."""
    references: dict[str, Row] = {}
    by_source: dict[str, list[Row]] = {}
    for r in rows:
        by_source.setdefault(r.source.name + (f"@{r.hardware_type}" if r.hardware_type else ""), []).append(r)
    for name, group in by_source.items():
        reference = reference_row(group)
        run = drift_run(group[0].source.path)
        for r in group:
            drift, drift_what = drift_of(r, run)
            r.quality = {"drift": drift, "drift_of": drift_what, "drift_run": run}
        if reference is None:
            continue
        references[name] = reference
        ref_records = reference.completed_records()
        for r in group:
            r.quality["reference"] = reference.cell
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
