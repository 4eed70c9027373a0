"""Quality under load: does what users get change with the load, the server or its batching?

Every measured, successful answer to a dataset payload is scored with ROUGE-1, -2 and -L against the document's
reference summary (the same scorer as `llmopt run`), each turn of a conversation on its own. Given an offline `llmopt
run` folder of the same model (`--quality-reference`), each answer sent as that run sent its prompts (a first turn,
no shared prefix) is also compared with its greedy prediction of the same document: the share that agree word for
word (whitespace aside), and the paired ROUGE delta (load answer minus offline prediction, document by document,
with its paired-bootstrap interval). Requests are greedy (temperature 0), so one exact input should get one answer
at every level: `consistency` lists the inputs whose answers differ.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
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


def reference_notes(identity: dict[str, Any], model: str, dataset: str, prompt: str, max_tokens: int,
                    ignore_eos: bool = False, api: str = "completions") -> list[str]:  # fmt: skip
    """Where the offline run differs from the load test in a way that makes its predictions differ by design: the
    dataset, the prompt (a chat API puts the published-hf prompt through the server's chat template, which an
    offline run does with `--prompt chat`), the token budget, --ignore-eos, sampling, the model."""
    notes = []
    chat = api == "chat"
    served_prompt = "chat" if chat and prompt == "published-hf" else prompt
    for key, ours in (("dataset", dataset), ("max_new_tokens", max_tokens)):
        if key in identity and identity[key] != ours:
            notes.append(f"the reference run's {key} is {identity[key]!r}, this test's {ours!r}")
    if "prompt" in identity and identity["prompt"] != served_prompt:
        if chat and identity["prompt"] != "chat":
            notes.append(f"the reference run had no chat template (its prompt {identity['prompt']!r}); this test's "
                         "--api chat put every prompt through the server's")  # fmt: skip
        elif identity["prompt"] == "chat" and not chat:
            notes.append("the reference run put its prompts through the chat template (--prompt chat); this test sent "
                         f"them as they are ({prompt!r}, --api completions)")  # fmt: skip
        else:
            notes.append(f"the reference run's prompt is {identity['prompt']!r}, this test's {served_prompt!r}")
    if "ignore_eos" in identity and bool(identity["ignore_eos"]) != ignore_eos:
        notes.append(f"the reference run {'ignored' if identity['ignore_eos'] else 'stopped at'} the end-of-sequence "
                     f"token, this test {'with' if ignore_eos else 'without'} --ignore-eos: answer lengths differ by "
                     "design")  # fmt: skip
    if identity.get("sampling", "greedy") != "greedy":
        notes.append(f"the reference run sampled ({identity['sampling']}): word-for-word agreement is not expected")
    if identity.get("model") and identity["model"] != model:
        notes.append(f"the reference run's model is {identity['model']!r}, the server's {model!r}")
    return notes


@dataclass(frozen=True)
class Answer:
    """One measured, successful answer, with what it answered: the document, the turn of its conversation, the
    shared prefix before its prompt, and a digest of the exact input (history included)."""

    payload: str
    document: str | None
    turn: int | None
    prefix_group: int | None
    prompt_key: str | None
    text: str

    @property
    def first_turn(self) -> bool:
        return self.turn is None or self.turn == 1


def _rouge(answers: Sequence[Answer], summaries: dict[str, str]) -> tuple[dict[str, Any], list[dict[str, float]]]:
    per = score_pairs([a.text for a in answers], [summaries[a.document or ""] for a in answers])
    out: dict[str, Any] = {"answers": len(answers), "documents": len({a.document for a in answers})}
    for k in TYPES:
        agg = bootstrap([p[k] for p in per])
        out[k] = {"mean": agg.mean, "low": agg.low, "high": agg.high}
    return out, per


def score_level(answers: Sequence[Answer], summaries: dict[str, str],
                reference: dict[str, dict[str, Any]] | None) -> dict[str, Any] | None:  # fmt: skip
    """A level's quality; None when no answer is to a dataset document. Each answer is scored with ROUGE against its
    document's reference summary. The level's figures are over first turns (a single-turn test: every answer); with
    turns, `by_turn` scores each turn on its own, since a later turn's answer was written with the conversation's
    history. Only answers sent as the offline run sent its prompts (a first turn, no shared prefix) are compared with
    its predictions; `notes` say what was left out of that comparison, and why."""
    scored = [a for a in answers if a.document in summaries]
    if not scored:
        return None
    first = [a for a in scored if a.first_turn]
    notes: list[str] = []
    out: dict[str, Any]
    if first:
        out, per = _rouge(first, summaries)
    else:
        out, per = {"answers": 0, "documents": 0}, []
    turns = sorted({a.turn for a in scored if a.turn is not None})
    if len(turns) > 1 or (turns and turns != [1]):
        out["by_turn"] = [{"turn": t, **_rouge([a for a in scored if a.turn == t], summaries)[0]} for t in turns]
        notes.append("later turns were answered with the conversation's history: each turn is scored on its own "
                     "(by_turn), the level's figures are over first turns")  # fmt: skip
    if reference:
        later = len(scored) - len(first)
        prefixed = [a for a in first if a.prefix_group is not None]
        comparable = [(i, a) for i, a in enumerate(first) if a.prefix_group is None and a.document in reference]
        if later:
            notes.append(f"{later} answers of later turns are not compared with the offline run's single-prompt "
                         "predictions")  # fmt: skip
        if prefixed:
            notes.append(f"{len(prefixed)} answers whose prompt starts with a shared prefix are not compared with the "
                         "offline run, which sent the prompt alone")  # fmt: skip
        if comparable:
            texts = [a.text for _, a in comparable]
            offline = [reference[a.document or ""] for _, a in comparable]
            vs: dict[str, Any] = {"answers": len(comparable), "agreement": agreement(texts, [o["prediction"] for o in offline])}
            for k in TYPES:
                if all(k in o for o in offline):
                    d = paired_delta([per[i][k] for i, _ in comparable], [o[k] for o in offline])
                    vs[f"{k}_delta"] = None if d is None else {"delta": d.delta, "low": d.low, "high": d.high}
            out["vs_reference"] = vs
    out["notes"] = notes
    return out


def consistency(levels: Sequence[tuple[str, Sequence[Answer]]]) -> dict[str, Any]:
    """Greedy answers to the same exact input across the test (label, answers per level): which inputs got more than
    one distinct answer (`differing`, named by payload and turn), and per level the share of answers equal to the
    first answer that input got. Inputs are compared whole (history and prefix included): the same document at
    another turn, or after other answers, is another input, never a difference."""
    first_seen: dict[str, str] = {}
    distinct: dict[str, set[str]] = {}
    names: dict[str, str] = {}
    per_level = []
    for label, answers in levels:
        same = total = 0
        for a in answers:
            key = a.prompt_key or a.payload
            names.setdefault(key, a.payload if a.turn is None else f"{a.payload} (turn {a.turn})")
            t = normalized(a.text)
            distinct.setdefault(key, set()).add(t)
            if key in first_seen:
                total += 1
                same += t == first_seen[key]
        for a in answers:
            first_seen.setdefault(a.prompt_key or a.payload, normalized(a.text))
        per_level.append({"level": label, "compared": total, "same_as_first": same / total if total else None})
    differing = sorted(names[key] for key, texts in distinct.items() if len(texts) > 1)
    return {"payloads": len(distinct), "differing": differing, "per_level": per_level}


def quality_goodput(measured: Sequence[Any], slo: Any, reference: dict[str, dict[str, Any]], floor: float,
                    window_s: float) -> dict[str, Any]:  # fmt: skip
    """Quality-aware goodput: the measured requests that met every SLO *and* whose answer agrees with the offline
    reference's answer to the same document (ROUGE-L F1 at least `floor`), per second of the level's window, and
    their share of the measured requests (the same denominator as the good share: errors and arrivals never sent
    count). An answer the reference cannot judge (a later turn, a shared prefix, a document it did not answer) is
    not counted as good; `unjudged` says how many there were."""
    good = judged = 0
    pairs: list[tuple[int, str, str]] = []
    for k, r in enumerate(measured):
        comparable = (r.turn in (None, 1) and r.prefix_group is None and r.document in reference
                      and r.text is not None)  # fmt: skip
        if comparable:
            judged += 1
            if slo.good(r):
                pairs.append((k, r.text, reference[r.document]["prediction"]))
    scores = score_pairs([p for _, p, _ in pairs], [q for _, _, q in pairs]) if pairs else []
    good = sum(s["rougeL"] >= floor for s in scores)
    return {
        "quality_floor_rougeL": floor,
        "quality_good_requests": good,
        "quality_good_share": good / len(measured) if measured else None,
        "quality_goodput_requests_per_s": good / window_s if window_s > 0 else None,
        "quality_unjudged": len(measured) - judged,
    }
