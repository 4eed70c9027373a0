"""Speed trials as sweep cells: each rung of the search is an experiment (written beside its cells, so
`llmopt sweep` can run it again by hand), each configuration one cell in a process of its own, run by the sweep's
executor (this machine, several GPUs, or Ray). An offline cell is `llmopt run`; an online one is `llmopt loadtest
--serve ENGINE --search concurrency`, which starts the server, finds the heaviest load that meets the SLO, and stops
the server with everything it started.

Each cell's result becomes a trial in the history as the cell ends; a configuration whose trial at this rung is in
the history already (a resumed search) is not run again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmopt.tuning.history import History, Trial
from llmopt.tuning.search import Rung
from llmopt.tuning.settings import Settings
from llmopt.tuning.space import PUBLISHED, Config

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4}
REQUESTS_PER_USER = 2  # the last rung's levels measure two waves of requests, so that every user is busy in them


def serve_args(config: Config) -> list[str]:
    """The server's own flags for a configuration's knobs (what `--serve-arg` passes through)."""
    args: list[str] = []
    if config.engine == "transformers":
        if config.get("quantization", "none") != "none":
            args += ["--quantization", config.get("quantization")]
        if config.get("continuous_batching"):
            args += ["--continuous-batching"]
        if config.get("attn_implementation"):
            args += ["--attn-implementation", config.get("attn_implementation")]
        if config.get("compile"):
            args += ["--compile"]
    elif config.engine == "llamacpp":
        if config.get("n_batch"):
            args += ["--n_batch", str(config.get("n_batch"))]
    else:  # vllm, vllm-awq
        # A search sends the dataset's documents at every level: with its prefix cache on, vLLM would answer the
        # second level's prompts from the first's, which a service of new documents never sees.
        args += ["--no-enable-prefix-caching", "--max-num-seqs", str(config.get("max_num_seqs"))]
        if config.get("max_num_batched_tokens"):
            args += ["--max-num-batched-tokens", str(config.get("max_num_batched_tokens"))]
        if config.get("kv_cache_dtype") not in (None, "auto"):
            args += ["--kv-cache-dtype", config.get("kv_cache_dtype")]
        if config.get("ngram"):
            args += ["--speculative-config", json.dumps(NGRAM, separators=(",", ":"))]
        if config.get("enforce_eager"):
            args += ["--enforce-eager"]
    return args


def serve_options(config: Config) -> dict[str, Any]:
    """What the load test's --serve needs beyond the server's flags (llama.cpp's GGUF type)."""
    gguf = config.get("gguf_type")
    return {"gguf_type": gguf} if config.engine == "llamacpp" and gguf not in (None, PUBLISHED) else {}


def load_flags(settings: Settings, rung: Rung, config: Config, start: int = 1) -> dict[str, Any]:
    """The load test of one configuration at one rung: a concurrency search under the SLO."""
    flags: dict[str, Any] = {
        "search": "concurrency",
        "search_start": start,
        "search_max": settings.search_max,
        "search_tolerance": rung.budget["tolerance"],
        "requests": rung.budget["requests"],
        "requests_per_user": rung.budget.get("requests_per_user", REQUESTS_PER_USER),
        "slo": settings.slo,
        "api": settings.api,
        "seed": settings.seed + rung.index,
        "serve_arg": serve_args(config),
        "timeout": settings.trial_timeout_s,
    }
    if rung.budget.get("confidence"):
        flags["confidence"] = rung.budget["confidence"]
    if rung.budget.get("warmup_requests") is not None:
        flags["warmup_requests"] = rung.budget["warmup_requests"]
    flags.update(serve_options(config))
    return flags


def cell_for(settings: Settings, rung: Rung, config: Config, start: int = 1) -> dict[str, Any]:
    """The experiment cell (as its YAML mapping) that runs one configuration at one rung."""
    name = f"r{rung.index}-{config.slug}"
    if config.objective == "online":
        return {"name": name, "serve": config.engine, "model": config.model,
                "load": load_flags(settings, rung, config, start)}  # fmt: skip
    options = {k: v for k, v in config.settings if k != "batch_size" and not (k == "gguf_type" and v == PUBLISHED)}
    options["limit"] = rung.budget["docs"]
    return {"name": name, "strategy": config.engine, "model": config.model,
            "batch_size": config.get("batch_size", 1), "options": options}  # fmt: skip


def served_prompt(settings: Settings) -> str:
    """The load test's --prompt: the chat prompt is the published one sent over the chat API (the server applies the
    model's chat template, as `llmopt run --prompt chat` does offline)."""
    return "published-hf" if settings.prompt == "chat" else settings.prompt


def experiment_for(settings: Settings, name: str, cells: list[dict[str, Any]], served: bool = False) -> dict[str, Any]:
    prompt = served_prompt(settings) if served else settings.prompt
    generation = {"max_new_tokens": settings.max_new_tokens, "prompt": prompt}
    spec: dict[str, Any] = {"name": name, "hardware": "this machine", "dataset": settings.dataset,
                            "generation": generation, "timeout_s": settings.trial_timeout_s, "cells": cells}  # fmt: skip
    if settings.price_per_hour is not None:
        spec["price_per_hour"] = settings.price_per_hour
    return spec


def run_cells(folder: Path, spec: dict[str, Any], executor: Any, say: Callable[[str], None],
              on_done: Callable[[int, str, dict[str, Any]], None]) -> dict[int, tuple[str, dict[str, Any]]]:  # fmt: skip
    """Write the experiment into `folder` and run its cells there with the sweep; `on_done` hears of each cell as it
    ends (its place in `spec["cells"]`, its folder's name, its state); returns the same for every cell."""
    import yaml

    from llmopt.sweeps import experiment
    from llmopt.sweeps.sweep import sweep

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tune-cells.yaml"
    path.write_text("# written by llmopt tune: run again by hand with `llmopt sweep` on this file\n"
                    + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")  # fmt: skip
    exp = experiment.load(path)
    place = {cell.name: k for k, cell in enumerate(exp.cells)}  # the experiment names the cells (a batch adds -bN)
    results = sweep(exp, folder, False, executor, _Quiet(), say, lambda cell, state: on_done(place[cell.name], cell.name, state))
    return {place[cell.name]: (cell.name, state) for cell, state in results}


class _Quiet:
    """The sweep's progress board: the tuner prints one line per trial instead of the cells' running lines."""

    def update(self, key: str, text: str) -> None:
        pass

    def end(self, key: str, text: str | None = None) -> None:
        pass


def speed_trial(config: Config, rung: Rung, state: dict[str, Any], folder: str, settings: Settings) -> Trial:
    """A cell's end state as the configuration's trial at this rung."""
    if config.objective == "online":
        return _online(config, rung, state, folder, settings)
    return _offline(config, rung, state, folder)


def _failed(state: dict[str, Any]) -> str:
    """Why a cell failed: its stderr's last line where the sweep only knows an exit code (a usage error, a server
    that would not start), else the sweep's own reason."""
    errors = [str(e) for e in state.get("errors") or []]
    tail = [line for line in (state.get("stderr_tail") or "").strip().splitlines() if line.strip()]
    if tail and (not errors or errors[0].startswith("exit code")):
        return tail[-1][:300]
    return (errors[0] if errors else f"status {state.get('status')}")[:300]


def _offline(config: Config, rung: Rung, state: dict[str, Any], folder: str) -> Trial:
    status = state.get("status")
    trial = Trial("speed", config.key, rung.index, folder=folder)
    if status == "oom" or (status in ("failed", "partial") and state.get("n_oom")):
        trial.passed, trial.bound = False, "memory"
        trial.detail = f"out of memory at batch {state.get('batch_size')} ({state.get('n_oom') or 0} documents)"
    elif status != "ok" or not state.get("docs_per_sec"):
        trial.passed, trial.bound, trial.detail = False, "failed", f"{status}: {_failed(state)}"
    peak = state.get("peak_gpu_mem_bytes") or state.get("peak_rss_bytes")
    trial.figures = {
        "docs_per_sec": state.get("docs_per_sec"), "output_tokens_per_s": state.get("output_tokens_per_s"),
        "docs": state.get("n_completed"), "batch_size": state.get("batch_size"), "memory_bytes": peak,
        "memory_kind": "GPU peak" if state.get("peak_gpu_mem_bytes") else "process RSS peak",
        "generate_s": state.get("generate_s"), "output_tokens_mean": state.get("output_tokens_mean"),
        "docs_per_sec_range": state.get("docs_per_sec_range"), "dtype": state.get("dtype"),
    }  # fmt: skip
    return trial


def _online(config: Config, rung: Rung, state: dict[str, Any], folder: str, settings: Settings) -> Trial:
    trial = Trial("speed", config.key, rung.index, folder=folder)
    searches = state.get("search") or []
    levels = [lv for lv in state.get("levels") or [] if lv.get("concurrency") is not None]
    if not searches or not levels:
        trial.passed, trial.bound, trial.detail = (
            False,
            "failed",
            _failed(state) if state.get("status") != "ok" else "no level ran",
        )
        if state.get("server_gone"):
            trial.detail = f"the server went away: {state['server_gone'].get('how')}"
        return trial
    search = searches[0]
    capacity = search.get("largest_passing")
    first = min(levels, key=lambda lv: lv["concurrency"])
    # TPOT at one user: the figure to set beside the estimate's floor (which is one sequence's)
    alone = first["tpot_ms"]["p50"] if first["concurrency"] == 1 else None
    passing = sorted({lv["concurrency"] for lv in levels if (lv.get("verdict") or {}).get("passed")})
    trial.figures = {"search": search.get("statement"), "capacity": capacity, "levels_run": len(levels),
                     "tpot_ms_c1_p50": alone, "passing_levels": passing}  # fmt: skip
    if capacity is None:
        trial.passed, trial.bound = False, "slo"
        reasons = (first.get("verdict") or {}).get("reasons") or []
        trial.detail = f"fails the SLO at {first['concurrency']:g} user(s): {'; '.join(reasons) or search.get('statement')}"
        trial.figures["overshoot"] = overshoot(first, settings)
        return trial
    at = [lv for lv in levels if lv["concurrency"] == capacity][-1]
    trial.figures.update({
        "output_tokens_per_s": at.get("output_tokens_per_s"), "requests_per_s": at.get("requests_per_s"),
        "ttft_p95_s": at["ttft_s"].get("p95"), "tpot_p95_ms": at["tpot_ms"].get("p95"),
        "e2e_p99_s": at["e2e_s"].get("p99"), "good_share": at.get("good_share"),
        "goodput_requests_per_s": at.get("goodput_requests_per_s"), "slo_statistics": at.get("slo_statistics"),
        "complete": search.get("complete"), "smallest_failing": search.get("smallest_failing"),
    })  # fmt: skip
    if not at.get("output_tokens_per_s"):
        trial.passed, trial.bound, trial.detail = False, "failed", f"no output measured at {capacity:g} users"
    return trial


def overshoot(level: dict[str, Any], settings: Settings) -> float | None:
    """How far a level missed its SLO: the largest statistic / limit over its objectives (1.3 = 30% over)."""
    from llmopt.serving.stats import parse_slo

    if not settings.slo:
        return None
    slo = parse_slo(settings.slo)
    ratios = []
    for name, limit in slo.limits_ms.items():
        value = (level.get("slo_statistics") or {}).get(f"{name}_p{slo.percentiles[name]:g}_ms")
        if value is not None:
            ratios.append(value / limit)
    return max(ratios, default=None)


def run_rung(rung: Rung, configs: list[Config], settings: Settings, root: Path, history: History, executor: Any,
             say: Callable[[str], None], report: Callable[[Trial], None],
             starts: dict[str, int] | None = None) -> dict[str, Trial]:  # fmt: skip
    """Every configuration's trial at this rung: from the history where it ran before, else run now (as cells)."""
    trials: dict[str, Trial] = {}
    todo: list[Config] = []
    for config in configs:
        known = history.get("speed", config.key, rung.index)
        if known is not None:
            trials[config.key] = known
        else:
            todo.append(config)
    if not todo:
        return trials
    folder = root / "trials" / f"rung{rung.index}"
    cells = [cell_for(settings, rung, c, (starts or {}).get(c.key, 1)) for c in todo]

    def done(k: int, name: str, state: dict[str, Any]) -> None:
        config = todo[k]
        trial = speed_trial(config, rung, state, str(Path("trials") / f"rung{rung.index}" / name), settings)
        trial.seconds = state.get("run_s") or state.get("elapsed_s")
        trials[config.key] = history.add(trial)
        report(trial)

    spec = experiment_for(settings, f"tune-rung{rung.index}", cells, served=settings.objective == "online")
    states = run_cells(folder, spec, executor, say, done)
    for k, (name, state) in states.items():  # finished in an earlier session, its history line lost: read it again
        if todo[k].key not in trials:
            done(k, name, state)
    return trials
