"""A load test's plan and its run: payloads binned by prompt length, every level of every bin in turn, stopped
early where a bin is clearly broken. Each level's requests are written as they finish; its figures come back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmopt.errors import UsageError
from llmopt.serving import loadgen, stats
from llmopt.serving.loadgen import Load, Payload
from llmopt.serving.observe import LevelObserver, Observing, stop_when
from llmopt.stopping import StopRequest

FMBENCH_BINS = "1-500,500-1000,1000-2000,2000-3000,3000-3840"


@dataclass(frozen=True)
class LoadPlan:
    """How hard to push, and what counts as good enough."""

    mode: str  # "concurrency" (closed loop) or "rate" (open loop)
    values: list[float]
    requests: int | None  # measured requests per level; None with a duration
    duration_s: float | None
    warmup_requests: int | None  # None: one per user, or 2 at a rate
    max_tokens: int
    ignore_eos: bool
    seed: int
    max_inflight: int
    latency_budget_s: float
    error_budget: float
    price_per_hour: float | None


def parse_bins(text: str) -> list[tuple[str, int, int]]:
    """'1-500,500-1000' -> bins holding prompts of lo <= tokens < hi (the last bin includes hi)."""
    bins = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not (sep and lo.isdigit() and hi.isdigit() and int(lo) < int(hi)):
            raise UsageError(f"--bins: {part!r} is not a range like 500-1000")
        bins.append((part.strip(), int(lo), int(hi)))
    return bins


def load_tokenizer(name: str | None) -> Any:
    """The tokenizer that counts prompt tokens (config and tokenizer files only, never the weights)."""
    if not name:
        return None
    from transformers import AutoTokenizer

    from llmopt.models import resolve

    try:
        return AutoTokenizer.from_pretrained(resolve.fetch(name, weights="random").path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a tokenizer for {name!r}: {str(exc).splitlines()[0]}") from None


def build_payloads(
    dataset: str, prompt: str, synthetic_tokens: int | None, bins: str | None, tokenizer: Any
) -> dict[str, list[Payload]]:
    """Payloads grouped into prompt-length bins (one bin for synthetic prompts or without a tokenizer)."""
    from llmopt.documents.datasets import load_dataset
    from llmopt.documents.prompts import PROMPTS

    if synthetic_tokens:
        if tokenizer is None:
            raise UsageError("--synthetic-tokens needs a tokenizer: pass --tokenizer or --model")
        prompts = [synthetic_prompt(tokenizer, synthetic_tokens, seed) for seed in range(16)]
        items = [Payload(f"synthetic{i:02d}", p, n) for i, (p, n) in enumerate(prompts)]
        return {f"synthetic-{synthetic_tokens}": items}
    template = PROMPTS[prompt]
    items = []
    for doc in load_dataset(dataset):
        text = template(doc.document)
        n = len(tokenizer(text)["input_ids"]) if tokenizer is not None else None
        items.append(Payload(doc.id, text, n))
    if tokenizer is None:
        return {"all": items}
    grouped: dict[str, list[Payload]] = {}
    ranges = parse_bins(bins or FMBENCH_BINS)
    for name, lo, hi in ranges:
        last = name == ranges[-1][0]
        grouped[name] = [it for it in items if lo <= it.prompt_tokens < hi or (last and it.prompt_tokens == hi)]
    return {name: members for name, members in grouped.items() if members}


def synthetic_prompt(tokenizer: Any, n_tokens: int, seed: int) -> tuple[str, int]:
    """Text of about n_tokens tokens: random ordinary tokens, decoded, then counted again (merges may shift it)."""
    import random

    rng = random.Random(seed)
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    text = tokenizer.decode([rng.choice(vocab) for _ in range(n_tokens)], skip_special_tokens=True)
    return text, len(tokenizer(text)["input_ids"])


def served_model(endpoint: str, api_key: str | None) -> str:
    """The first model the server lists, for the requests' `model` field."""
    import urllib.error
    import urllib.request

    root = endpoint.rstrip("/")
    root = root if root.endswith("/v1") else root + "/v1"
    request = urllib.request.Request(root + "/models", headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            listed = json.load(response).get("data") or []
    except urllib.error.HTTPError as exc:
        raise UsageError(f"{root}/models answered HTTP {exc.code}: pass --served-model NAME") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise UsageError(f"cannot reach {root}/models ({exc}): is the server up? (or pass --served-model)") from None
    if not listed:
        raise UsageError(f"{root}/models lists no model: pass --served-model NAME")
    return listed[0]["id"]


def run_levels(
    plan: LoadPlan,
    target: Any,
    bins: dict[str, list[Payload]],
    out: Path,
    levels: list[dict[str, Any]],
    stopped: list[dict[str, Any]],
    stop: StopRequest,
    say: Callable[[str], None],
    observing: Observing | None = None,
) -> None:
    """Run every level, appending to `levels` as each finishes, so an interrupt keeps the finished ones."""
    mode = plan.mode
    observing = observing or Observing(scraper=None)
    for bin_name, payloads in bins.items():
        broken = None
        for value in plan.values:
            if broken or stop.requested:
                stopped.append({"bin": bin_name, mode: value, "reason": broken or "interrupted"})
                continue
            warmup = plan.warmup_requests if plan.warmup_requests is not None else (value if mode == "concurrency" else 2)
            load = Load(plan.requests, plan.duration_s, int(warmup), plan.max_tokens, plan.ignore_eos)
            folder = out / "levels" / bin_name / (f"c{value}" if mode == "concurrency" else f"r{value:g}")
            folder.mkdir(parents=True, exist_ok=True)
            observer = LevelObserver(observing, folder)
            halt = stop_when(lambda: stop.requested, observer)
            with open(folder / "requests.jsonl", "w", encoding="utf-8") as sink:

                def record(result: Any, sink: Any = sink, observer: LevelObserver = observer) -> None:
                    sink.write(json.dumps(result.as_record()) + "\n")
                    sink.flush()
                    observer.on_result(result)

                if mode == "concurrency":
                    coro = loadgen.closed_loop(target, payloads, int(value), load, record, halt)
                else:
                    coro = loadgen.open_loop(target, payloads, value, load, plan.seed, plan.max_inflight, record, halt)
                results = asyncio.run(observer.run(coro))
            figures = stats.level_stats(results, loadgen.measured_window(results), plan.price_per_hour)
            level = {"bin": bin_name, "concurrency": value if mode == "concurrency" else None,
                     "rate": value if mode == "rate" else None, **figures,
                     **observer.figures(f"{bin_name} {mode} {value:g}")}  # fmt: skip
            levels.append(level)
            say(level_line(level, mode))
            for note in observed_lines(level):
                say(f"{bin_name} {mode} {value:g}: {note}")
            broken = f"over-saturated at {mode} {value:g}" if level["saturated"] else None
            broken = broken or stats.clearly_broken(level, plan.latency_budget_s, plan.error_budget)
            if broken:
                say(f"stopping the {bin_name} sweep: {broken}")


def level_line(level: dict[str, Any], mode: str) -> str:
    value = level[mode]
    e2e, ttft = level["e2e_s"], level["ttft_s"]

    def f(x: float | None, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    return (
        f"{level['bin']:>12} {mode} {value:<6g} {level['completed']:>4} ok {level['errors']:>3} err  "
        f"{f(level['requests_per_s'], '.2f')} req/s  {f(level['output_tokens_per_s'], '.1f')} tok/s  "
        f"e2e p50 {f(e2e['p50'])} p95 {f(e2e['p95'])} s  ttft p50 {f(ttft['p50'])} s  "
        f"tpot p50 {f(level['tpot_ms']['p50'], '.1f')} ms"
    )


def observed_lines(level: dict[str, Any]) -> list[str]:
    """What the watchers found at a level that the user must see: over-saturation, a client-bound level."""
    lines = []
    if level.get("saturated"):
        lines.append(f"stopped early: {level['saturated']}")
    if (level.get("client") or {}).get("client_bound"):
        lines.append(f"client-bound (its figures measure the load generator too): {level['client']['client_bound']}")
    return lines
