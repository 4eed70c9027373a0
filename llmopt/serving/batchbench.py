"""Prefill and decode latency and throughput per static batch size, as TGI's `text-generation-benchmark` reports
them, in-process for the transformers and vLLM strategies.

Per batch size and repeat: prefill = one generate call for 1 new token (the prompt pass and the first token);
full = one call for the full new tokens; decode = full - prefill, spread over the other new tokens. Prompts are
random token ids of exactly the prompt length; outputs are forced to their length. Warm-up is untimed and runs
both calls at their full length, so that a compiled strategy compiles (and sizes its static cache) before the clock
starts. vLLM runs with prefix caching off: every repeat sends the same prompts, and a cached prefix would turn the
timed prefill into a one-token lookup.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmopt.measure import memory
from llmopt.measure.stats import percentile
from llmopt.stopping import StopRequest


def stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "min": None, "max": None, "p50": None, "p90": None, "p99": None}
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values),
            "p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99)}  # fmt: skip


class _CudaGraphRecordings:
    """CUDA graphs recorded so far in this process. CUDA-graph trees record a graph again, without compiling
    anything, when a static input (a parameter, a static KV cache) has moved; torch announces each recording to the
    compile callbacks, so they are counted there from the first call of `compilations` on."""

    count = 0
    listening = False

    @classmethod
    def listen(cls, dynamo: Any) -> None:
        if cls.listening:
            return
        trigger = dynamo.callback.CallbackTrigger.CUDAGRAPH_RECORDING

        def on_start(args: Any) -> None:
            if args.callback_trigger == trigger:
                cls.count += 1

        dynamo.callback_handler.register_start_callback(on_start)
        cls.listening = True


def compilations() -> int | None:
    """Graphs torch.compile has built so far in this process plus the CUDA graphs it has recorded, or None where
    torch's compiler was never loaded (nothing was compiled, so nothing can be while timed)."""
    import sys

    dynamo_utils = sys.modules.get("torch._dynamo.utils")
    if dynamo_utils is None:
        return None
    _CudaGraphRecordings.listen(sys.modules["torch._dynamo"])
    return int(dynamo_utils.counters["stats"]["unique_graphs"]) + _CudaGraphRecordings.count


def measure_batch(strategy: Any, size: int, prompt_tokens: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    from llmopt.measure.timing import SyncedTimer
    from llmopt.strategies.base import GenerationParams

    prompts = [strategy.random_prompt(prompt_tokens, seed=i) for i in range(size)]
    first = GenerationParams(max_new_tokens=1, ignore_eos=True)
    full = GenerationParams(max_new_tokens=new_tokens, ignore_eos=True)
    # Warm-up at exactly the timed lengths: a shorter one leaves a compiled strategy to size its static cache and
    # compile again inside the first timed repeat.
    strategy.generate_batch(prompts, full)
    strategy.generate_batch(prompts, first)
    compiled_before = compilations()
    prefill_s, decode_s, cached, unresolved = [], [], 0, 0
    for _ in range(repeats):
        timer = SyncedTimer(strategy.synchronize)
        with timer:
            short = strategy.generate_batch(prompts, first)
        prefill_s.append(timer.seconds)
        cached += sum(g.cached_prompt_tokens or 0 for g in short)
        with timer:
            out = strategy.generate_batch(prompts, full)
        if any(g.output_tokens != new_tokens for g in out):
            raise RuntimeError(f"the strategy returned {[g.output_tokens for g in out]} tokens, not {new_tokens}")
        decode = timer.seconds - prefill_s[-1]
        if decode > 0:
            decode_s.append(decode)
        else:  # two separate calls: with few new tokens, their difference can drown in the clock's noise
            unresolved += 1
    steps = max(new_tokens - 1, 1)
    compiled_after = compilations()
    return {
        "batch_size": size,
        "status": "ok",
        "prefill_latency_ms": stats([1000 * s for s in prefill_s]),
        "prefill_tokens_per_s": stats([size * prompt_tokens / s for s in prefill_s]),
        "decode_latency_ms_per_token": stats([1000 * s / steps for s in decode_s]),
        "decode_tokens_per_s": stats([size * steps / s for s in decode_s]),
        "repeats": repeats,
        "decode_unresolved_repeats": unresolved,
        # Both must be 0 for the timings to mean what they say: no prompt token served from a prefix cache, and
        # no graph compiled or CUDA graph recorded while the clock ran.
        "prefix_cached_tokens": cached,
        "compilations_while_timed": None if compiled_before is None else compiled_after - compiled_before,
    }


def sweep_sizes(
    strategy: Any, sizes: list[int], prompt_tokens: int, new_tokens: int, repeats: int, stop: StopRequest,
    say: Callable[[str], None],
) -> tuple[list[dict[str, Any]], bool]:  # fmt: skip
    """Every batch size in turn, until one runs out of memory (larger ones are not tried) or a stop is asked for.
    Returns the rows and whether the sweep was interrupted; finished rows are kept either way."""
    rows: list[dict[str, Any]] = []
    try:
        for size in sizes:
            if stop.requested:
                raise KeyboardInterrupt
            measured: list[dict[str, Any]] = []
            out_of_memory = memory.unless_out_of_memory(
                lambda size=size, into=measured: into.append(measure_batch(strategy, size, prompt_tokens, new_tokens, repeats))
            )
            if out_of_memory is not None:
                rows.append({"batch_size": size, "status": "oom", "error": out_of_memory.split(":")[0]})
                say(f"batch {size}: out of memory; larger sizes not tried")
                break
            row = measured[0]
            rows.append(row)
            say(row_line(row))
    except KeyboardInterrupt:
        return rows, True
    return rows, False


def row_line(row: dict[str, Any]) -> str:
    decode = row["decode_latency_ms_per_token"]["p50"]
    return (
        f"batch {row['batch_size']:>4}: prefill {row['prefill_latency_ms']['p50']:.1f} ms "
        f"({row['prefill_tokens_per_s']['p50']:.0f} tok/s), decode "
        + ("not resolved (raise --max-new-tokens)" if decode is None else
           f"{decode:.2f} ms/token ({row['decode_tokens_per_s']['p50']:.0f} tok/s)")
    )  # fmt: skip


METRICS = ("prefill_latency_ms", "prefill_tokens_per_s", "decode_latency_ms_per_token", "decode_tokens_per_s")


def write_outputs(out: Path, summary: dict[str, Any], plots: bool) -> None:
    ok = [r for r in summary["batches"] if r["status"] == "ok"]
    fields = ["batch_size", "status"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "min", "max", "p50", "p90", "p99")]
    fields += ["decode_floor_ms_per_token", "prefill_floor_ms", "decode_unresolved_repeats", "prefix_cached_tokens",
               "compilations_while_timed"]  # fmt: skip
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in summary["batches"]:
            writer.writerow({**r, **{f"{m}_{s}": v for m in METRICS if m in r for s, v in r[m].items()}})
    lines = [
        f"# Batch benchmark: {summary['strategy']} on {summary['model']} ({summary['weights']} weights)",
        "",
        f"{summary['device']}; prompts of {summary['prompt_tokens']} tokens, {summary['new_tokens']} new tokens; "
        "p50 of the repeats (summary.csv has mean, min, max, p90, p99).",
        "",
        f"Method: {summary['method']}.",
        "",
        "| batch | prefill ms | prefill tok/s | decode ms/token | decode tok/s | decode floor ms/token | status |",
        "|---|---|---|---|---|---|---|",
    ]

    def num(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    for r in summary["batches"]:
        if r["status"] != "ok":
            lines.append(f"| {r['batch_size']} | – | – | – | – | – | {r['status']} |")
            continue
        lines.append(
            f"| {r['batch_size']} | {r['prefill_latency_ms']['p50']:.1f} | {r['prefill_tokens_per_s']['p50']:.0f} "
            f"| {num(r['decode_latency_ms_per_token']['p50'], '.2f')} | {num(r['decode_tokens_per_s']['p50'], '.0f')} "
            f"| {num(r.get('decode_floor_ms_per_token'), '.2f')} | ok |"
        )
    if plots and ok:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        (out / "plots").mkdir(exist_ok=True)
        sizes = [r["batch_size"] for r in ok]
        for name, (a, b), ylabel in (
            ("latency", ("prefill_latency_ms", "decode_latency_ms_per_token"), ("prefill (ms)", "decode (ms/token)")),
            ("throughput", ("prefill_tokens_per_s", "decode_tokens_per_s"), ("prefill tokens/s", "decode tokens/s")),
        ):
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
            for ax, key, label in zip(axes, (a, b), ylabel, strict=True):
                have = [r for r in ok if r[key]["p50"] is not None]
                p50 = [r[key]["p50"] for r in have]
                spread = [
                    [m - r[key]["min"] for m, r in zip(p50, have, strict=True)],
                    [r[key]["max"] - m for m, r in zip(p50, have, strict=True)],
                ]
                ax.errorbar([r["batch_size"] for r in have], p50, yerr=spread, fmt="-o")
                ax.set(xscale="log", xlabel="batch size", ylabel=label)
                ax.set_xticks(sizes, [str(s) for s in sizes])
            fig.suptitle(f"{summary['strategy']} {name} per batch size (p50, min to max)")
            fig.tight_layout()
            fig.savefig(out / "plots" / f"{name}.png", dpi=110)
            plt.close(fig)
            lines += ["", f"![{name}](plots/{name}.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
