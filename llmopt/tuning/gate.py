"""The last and dearest check, for the finalists only: MLPerf's paired ROUGE gate (llmopt.quality.paired) of each
finalist's quality mode against the reference mode, run offline on the gate's documents as sweep cells.

The gate passes when the 95% interval of every ROUGE ratio (mode / reference) is at or above the bar, fails when one
is wholly below, and is otherwise inconclusive, which is not a pass. An inconclusive gate says how many documents
would settle it: the interval's half-width shrinks as 1/sqrt(n), so the binding ratio's interval clears the bar at
about n x (half-width / distance to the bar)^2 documents. Then drift, measured over thousands of token positions,
decides against its thresholds, and the result says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmopt.tuning.history import History, Trial
from llmopt.tuning.settings import Settings
from llmopt.tuning.space import QualityMode

GATE = "gate"
KINDS = ("rouge1", "rouge2", "rougeL")
REFERENCE_CELL = "gate-reference"


def verdict(mode_records: dict[str, dict[str, Any]], reference_records: dict[str, dict[str, Any]],
            bar: float) -> dict[str, Any]:  # fmt: skip
    """The gate of one mode's completed records against the reference's, on the documents both completed."""
    from llmopt.quality import paired

    shared = [doc for doc in reference_records if doc in mode_records]
    deltas = {}
    for kind in KINDS:
        a = [mode_records[d].get(kind) for d in shared]
        b = [reference_records[d].get(kind) for d in shared]
        deltas[kind] = paired.paired_delta(a, b) if shared and None not in a and None not in b else None
    result = paired.gate(list(deltas.values()), bar)
    ratios = {k: {"ratio": d.ratio, "low": d.ratio_low, "high": d.ratio_high} for k, d in deltas.items() if d}
    settle = documents_to_settle(deltas, bar, len(shared)) if result == "inconclusive" else None
    return {"verdict": result, "documents": len(shared), "ratios": ratios, "documents_to_settle": settle}


def documents_to_settle(deltas: dict[str, Any], bar: float, n: int) -> int | None:
    """About how many documents would make an inconclusive gate decide: for each ratio whose interval holds the
    bar, n x (half-width / |ratio - bar|)^2; the largest of them. None where a ratio sits on the bar."""
    needed = []
    for d in deltas.values():
        if d is None or d.ratio is None or d.ratio_low is None or d.ratio_high is None:
            continue
        if d.ratio_low < bar <= d.ratio_high:
            distance = abs(d.ratio - bar)
            if distance == 0:
                return None
            needed.append(math.ceil(n * ((d.ratio_high - d.ratio_low) / 2 / distance) ** 2))
    return max(needed, default=None)


def gate_cells(
    settings: Settings, modes: list[QualityMode], docs: int | None, batch: Callable[[str], int]
) -> list[dict[str, Any]]:
    """The offline runs the gate compares: the reference at its dtype, and each mode as it runs here."""
    limit = {"limit": docs} if docs else {}
    cells = [{"name": REFERENCE_CELL, "strategy": settings.reference, "model": settings.model,
              "batch_size": batch(settings.reference), "options": {"dtype": settings.reference_dtype, **limit}}]  # fmt: skip
    for mode in modes:
        cells.append({"name": cell_name(mode), "strategy": mode.strategy, "model": mode.model,
                      "batch_size": batch(mode.strategy), "options": {**dict(mode.options), **limit}})  # fmt: skip
    return cells


def cell_name(mode: QualityMode) -> str:
    return "gate-" + mode.label.replace("[", "-").replace("]", "").replace("=", "").replace(",", "-")


def judge(mode: QualityMode, outcome: dict[str, Any] | None, why_not: str | None, bar: float) -> Trial:
    trial = Trial(GATE, mode.label)
    if outcome is None or outcome.get("verdict") is None:
        trial.detail = f"gate not run: {why_not or 'no paired documents'}"
        trial.figures = {"verdict": None}
        return trial
    trial.figures = outcome
    ratios = ", ".join(_ratio(k, v) for k, v in outcome["ratios"].items())
    n = outcome["documents"]
    if outcome["verdict"] == "failed":
        trial.passed, trial.bound = False, "gate"
        trial.detail = f"fails the {bar:.0%} gate on {n} documents: {ratios}"
    elif outcome["verdict"] == "passed":
        trial.detail = f"passes the {bar:.0%} gate on {n} documents: {ratios}"
    else:
        more = outcome.get("documents_to_settle")
        settle = f"; about {more} documents would settle it" if more else ""
        trial.detail = f"inconclusive on {n} documents{settle}: {ratios}"
    return trial


def _ratio(kind: str, r: dict[str, Any]) -> str:
    if r.get("ratio") is None or r.get("low") is None or r.get("high") is None:
        return f"{kind} no ratio (the reference scored 0)"
    return f"{kind} {r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"


def run_gate(modes: list[QualityMode], settings: Settings, root: Path, history: History, run_cells: Callable[..., Any],
             report: Callable[[Trial], None], batch: Callable[[str], int]) -> dict[str, Trial]:  # fmt: skip
    """Each mode's gate trial (the history's where it ran before); the reference runs once for all."""
    from llmopt.results import completed_records, read_state

    trials = {m.label: t for m in modes if (t := history.get(GATE, m.label)) is not None}
    todo = [m for m in modes if m.label not in trials]
    if not todo:
        return trials
    folder = root / "gate"
    ran = run_cells(folder, gate_cells(settings, todo, settings.gate_docs, batch))  # {place: (folder name, state)}
    ref_folder = folder / ran[0][0]
    reference = completed_records(ref_folder)
    ref_state = read_state(ref_folder) or {}
    for k, mode in enumerate(todo, start=1):
        cell = folder / ran[k][0]
        state = read_state(cell) or {}
        why = None
        if not reference:
            why = f"the reference run has no summaries ({ref_state.get('status')}: {(ref_state.get('errors') or [''])[0]})"
        elif state.get("status") not in ("ok", "partial"):
            why = f"{state.get('status')}: {(state.get('errors') or [''])[0]}"
        outcome = None if why else verdict(completed_records(cell), reference, settings.gate)
        trial = judge(mode, outcome, why, settings.gate)
        trial.folder = str(Path("gate") / ran[k][0])
        trial.figures["reference_folder"] = str(Path("gate") / ran[0][0])
        trials[mode.label] = history.add(trial)
        report(trials[mode.label])
    return trials
