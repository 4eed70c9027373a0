"""The quality screen, the second check: how far each quality mode's next-token distributions drift from the
reference's (`llmopt drift`: mean KL and top-1 agreement, teacher-forced over the reference's own summaries of a few
documents), before any configuration of it is timed. A mode past either threshold is dropped with its figure.

Drift is the sharper measure on few documents (thousands of token positions, where ROUGE has a few dozen scores),
which is why it goes first and why it decides when the paired ROUGE gate cannot (docs/tune.md). Each mode runs as it
would serve: at its own dtype on this host, against the reference at the reference's dtype (float32 by default).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from llmopt.tuning.history import History, Trial
from llmopt.tuning.settings import Settings
from llmopt.tuning.space import QualityMode

DRIFT = "drift"


def spec(mode: QualityMode) -> str:
    """The mode as `llmopt drift --strategies` names it: NAME[key=value;...]=MODEL."""
    opts = ";".join(f"{k}={v}" for k, v in mode.options)
    return mode.strategy + (f"[{opts}]" if opts else "") + f"={mode.model}"


def drift_args(settings: Settings, modes: list[QualityMode]) -> list[str]:
    return [
        "--model", settings.model, "--reference", settings.reference, "--dtype", settings.reference_dtype,
        "--modes-dtype", "auto",
        "--strategies", ",".join(spec(m) for m in modes), "--dataset", settings.dataset, "--prompt", settings.prompt,
        "--limit", str(settings.drift_docs), "--max-new-tokens", str(settings.drift_tokens),
        "--enforce-eager",  # vLLM: no graph capture or compile to wait for; the arithmetic is the same
        "--no-reference-check",  # the reference against itself reads 0 by construction: a process saved
    ]  # fmt: skip


def judge(mode: QualityMode, result: dict | None, settings: Settings) -> Trial:
    trial = Trial(DRIFT, mode.label, folder=DRIFT)
    if result is None or result.get("status") != "ok":
        why = (result or {}).get("error") or "no result"
        trial.detail = f"drift not measured ({(result or {}).get('status', 'missing')}: {why})"
        trial.figures = {"measured": False}
        return trial
    kl, top1 = result.get("kl_mean"), result.get("top1_agreement")
    trial.figures = {"measured": True, "kl_mean": kl, "kl_p99": result.get("kl_p99"), "top1_agreement": top1,
                     "perplexity": result.get("perplexity"), "positions": result.get("positions"),
                     "dtype": result.get("dtype")}  # fmt: skip
    if kl is not None and kl > settings.max_kl:
        trial.passed, trial.bound = False, "drift"
        trial.detail = f"KL mean {kl:.4g} > {settings.max_kl:g} against {settings.reference} {settings.reference_dtype}"
    elif top1 is not None and top1 < settings.min_top1:
        trial.passed, trial.bound = False, "drift"
        trial.detail = f"top-1 agreement {top1:.3f} < {settings.min_top1:g}"
    else:
        trial.detail = f"KL mean {kl:.4g}, top-1 {top1:.3f}" if kl is not None and top1 is not None else "measured"
    return trial


def screen(modes: list[QualityMode], settings: Settings, root: Path, history: History,
           run_drift: Callable[[list[str], Path], int], report: Callable[[Trial], None]) -> dict[str, Trial]:  # fmt: skip
    """Each mode's drift trial (from the history where it ran before); `run_drift` runs `llmopt drift` with the
    given arguments into a folder (its reference is cached there, so a resumed screen measures only the rest)."""
    trials = {m.label: t for m in modes if (t := history.get(DRIFT, m.label)) is not None}
    todo = [m for m in modes if m.label not in trials]
    if todo:
        run_drift(drift_args(settings, todo), root / DRIFT)
        measured = read_modes(root / DRIFT)
        for mode in todo:
            trials[mode.label] = history.add(judge(mode, measured.get(spec(mode)), settings))
            report(trials[mode.label])
    return trials


def read_modes(folder: Path) -> dict[str, dict]:
    """The drift run's per-mode results, by the spec each was asked as."""
    out = {}
    for path in sorted((folder / "modes").glob("*.json")):
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if row.get("spec"):
            out[row["spec"]] = row
    return out
