"""Quality under load: does what users get change with the load, the server or its batching?

Every measured, successful answer to a dataset payload is scored with ROUGE-1, -2 and -L against the document's
reference summary (the same scorer as `llmopt run`). Given an offline `llmopt run` folder of the same model
(`--quality-reference`), each answer is also compared with that run's greedy prediction of the same document: the
share that agree word for word (whitespace aside), and the paired ROUGE delta (load answer minus offline prediction,
document by document, with its paired-bootstrap interval). Requests are greedy (temperature 0), so one prompt should
get one answer at every level: `consistency` lists the payloads whose answers differ between levels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError
from llmopt.files import read_jsonl
from llmopt.quality.paired import agreement, paired_delta
from llmopt.quality.rouge import bootstrap, score_pairs

TYPES = ("rouge1", "rouge2", "rougeL")


def normalized(text: str) -> str:
    return " ".join(text.split())


def load_reference(folder: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """An `llmopt run` folder's completed documents by id (prediction and ROUGE), and its settings."""
    records_path = folder / "records.jsonl"
    if not records_path.is_file():
        raise UsageError(f"--quality-reference {str(folder)!r}: no records.jsonl there (give an `llmopt run` folder)")
    rows = {r["id"]: r for r in read_jsonl(records_path)[0] if r.get("status") == "ok" and "prediction" in r}
    if not rows:
        raise UsageError(f"--quality-reference {str(folder)!r}: no completed documents in its records.jsonl")
    try:
        identity = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("identity", {})
    except (OSError, ValueError):
        identity = {}
    return rows, identity


def reference_notes(identity: dict[str, Any], model: str, dataset: str, prompt: str, max_tokens: int) -> list[str]:
    """Where the offline run differs from the load test in a way that makes its predictions differ by design."""
    notes = []
    for key, ours in (("dataset", dataset), ("prompt", prompt), ("max_new_tokens", max_tokens)):
        if key in identity and identity[key] != ours:
            notes.append(f"the reference run's {key} is {identity[key]!r}, this test's {ours!r}")
    if identity.get("sampling", "greedy") != "greedy":
        notes.append(f"the reference run sampled ({identity['sampling']}): word-for-word agreement is not expected")
    if identity.get("model") and identity["model"] != model:
        notes.append(f"the reference run's model is {identity['model']!r}, the server's {model!r}")
    return notes


def score_level(answers: Sequence[tuple[str, str]], summaries: dict[str, str],
                reference: dict[str, dict[str, Any]] | None) -> dict[str, Any] | None:  # fmt: skip
    """A level's quality from its (payload id, answer text) pairs; None when no answer is to a dataset document."""
    scored = [(pid, text) for pid, text in answers if pid in summaries]
    if not scored:
        return None
    per = score_pairs([t for _, t in scored], [summaries[pid] for pid, _ in scored])
    out: dict[str, Any] = {"answers": len(scored), "documents": len({pid for pid, _ in scored})}
    for k in TYPES:
        agg = bootstrap([p[k] for p in per])
        out[k] = {"mean": agg.mean, "low": agg.low, "high": agg.high}
    if reference:
        paired = [(i, pid) for i, (pid, _) in enumerate(scored) if pid in reference]
        if paired:
            texts = [scored[i][1] for i, _ in paired]
            offline = [reference[pid]["prediction"] for _, pid in paired]
            out["vs_reference"] = {"answers": len(paired), "agreement": agreement(texts, offline)}
            for k in TYPES:
                if all(k in reference[pid] for _, pid in paired):
                    d = paired_delta([per[i][k] for i, _ in paired], [reference[pid][k] for _, pid in paired])
                    out["vs_reference"][f"{k}_delta"] = None if d is None else {"delta": d.delta, "low": d.low, "high": d.high}
    return out


def consistency(levels: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> dict[str, Any]:
    """Greedy answers of the same payload across levels (label, [(payload id, text)]): which payloads got more than one
    distinct answer, and per level the share of answers equal to the payload's answer at the first level."""
    first_seen: dict[str, str] = {}
    distinct: dict[str, set[str]] = {}
    per_level = []
    for label, answers in levels:
        same = total = 0
        for pid, text in answers:
            t = normalized(text)
            distinct.setdefault(pid, set()).add(t)
            if pid in first_seen:
                total += 1
                same += t == first_seen[pid]
        for pid, text in answers:
            first_seen.setdefault(pid, normalized(text))
        per_level.append({"level": label, "compared": total, "same_as_first": same / total if total else None})
    differing = sorted(pid for pid, texts in distinct.items() if len(texts) > 1)
    return {"payloads": len(distinct), "differing": differing, "per_level": per_level}
