"""python -m llmopt.batchbench: prefill and decode latency and throughput per static batch size, as TGI's
`text-generation-benchmark` reports them, in-process for the transformers and vLLM strategies.

python -m llmopt.batchbench --strategy default --model tiny --batch-sizes 1,2,4,8 --prompt-tokens 512 --new-tokens 128

Per batch size and repeat: prefill = one generate call for 1 new token (the prompt pass and the first token);
full = one call for --new-tokens tokens; decode = full - prefill, spread over the other new tokens. Prompts are
random token ids of exactly --prompt-tokens; outputs are forced to their length. Warm-up is untimed and runs
both calls at their full length, so that a compiled strategy compiles (and sizes its static cache) before the clock
starts. vLLM runs with prefix caching off: every repeat sends the same prompts, and a cached prefix would turn the
timed prefill into a one-token lookup.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from llmopt import cli
from llmopt.errors import UsageError
from llmopt.stopping import StopRequest

PROG = "python -m llmopt.batchbench"


def _sizes(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1, got {text!r}")
    return values


def parser() -> cli.Parser:
    p = cli.Parser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--strategy", required=True, help="a transformers or vLLM strategy (default, sdpa, 4bit, compile, vllm, ...)")
    p.add_argument("--model", help="tiny, a shipped architecture with --weights random, a folder or a Hub id")
    p.add_argument("--weights", choices=["pretrained", "random"], default="pretrained")
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--batch-sizes", type=_sizes, default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--prompt-tokens", type=cli.positive_int, default=512)
    p.add_argument(
        "--max-new-tokens", "--new-tokens", dest="new_tokens", type=cli.positive_int, default=128,
        help="new tokens of the full call (default 128; --new-tokens is the same)",
    )  # fmt: skip
    p.add_argument("--repeats", type=cli.positive_int, default=5, help="timed repeats per batch size (default 5)")
    p.add_argument("--enforce-eager", action="store_true", default=None, help="vLLM: no CUDA graphs or torch.compile")
    p.add_argument("--max-model-len", type=cli.positive_int, help="vLLM: longest prompt plus output")
    p.add_argument("--out", type=Path, help="results folder (default results/batchbench-<strategy>-<model>)")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    return p


def stats(values: list[float]) -> dict[str, float | None]:
    from llmopt.summary import percentile

    if not values:
        return {"mean": None, "min": None, "max": None, "p50": None, "p90": None, "p99": None}
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values),
            "p50": percentile(values, 50), "p90": percentile(values, 90), "p99": percentile(values, 99)}  # fmt: skip


def compilations() -> int | None:
    """Graphs torch.compile has built so far in this process, or None where torch's compiler was never loaded."""
    import sys

    dynamo_utils = sys.modules.get("torch._dynamo.utils")
    return None if dynamo_utils is None else int(dynamo_utils.counters["stats"]["unique_graphs"])


def measure_batch(strategy: Any, size: int, prompt_tokens: int, new_tokens: int, repeats: int) -> dict[str, Any]:
    from llmopt.measure import SyncedTimer
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
        # no graph compiled while the clock ran.
        "prefix_cached_tokens": cached,
        "compilations_while_timed": None if compiled_before is None else compiled_after - compiled_before,
    }


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from llmopt import measure, models, roofline, strategies
    from llmopt.results import write_json_atomic

    cls = strategies.resolve(args.strategy)
    if not cls.needs_model or not cls.uses_prompt:
        raise UsageError(f"strategy {cls.name!r} has no model to benchmark")
    strategies.require_available(cls)
    model = args.model or cls.default_model
    models.check_weights(model, args.weights)
    options: dict[str, Any] = {"weights": args.weights}
    if args.dtype:
        options["dtype"] = args.dtype
    if cls.engine_batching:
        options.update({k: v for k, v in (("enforce_eager", args.enforce_eager), ("max_model_len", args.max_model_len)) if v})
        options["enable_prefix_caching"] = False  # the repeats send the same prompts
    elif args.enforce_eager or args.max_model_len:
        raise UsageError(f"--enforce-eager and --max-model-len are vLLM engine options; {cls.name!r} does not take them")
    out = args.out or Path("results") / f"batchbench-{cls.name}-{Path(model).name}"
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{str(out)!r} already holds results: pass another --out")
    strategy = cls(model, **options)
    stop = cli.stop_on_signals(StopRequest())
    strategy.load()
    rows: list[dict[str, Any]] = []
    interrupted = False
    try:
        context = strategy.context_length()
        if context is not None and args.prompt_tokens + args.new_tokens > context:
            raise UsageError(f"--prompt-tokens plus --max-new-tokens exceeds the model's context of {context}")
        for size in args.batch_sizes:
            if stop.requested:
                raise KeyboardInterrupt
            out_of_memory = None
            try:
                row = measure_batch(strategy, size, args.prompt_tokens, args.new_tokens, args.repeats)
            except Exception as exc:
                if not measure.is_out_of_memory(exc):
                    raise
                out_of_memory = type(exc).__name__
            if out_of_memory is not None:  # freed outside the except block, whose traceback holds the batch
                measure.free_device_memory()
                rows.append({"batch_size": size, "status": "oom", "error": out_of_memory})
                print(f"batch {size}: out of memory; larger sizes not tried", file=sys.stderr)
                break
            rows.append(row)
            decode = row["decode_latency_ms_per_token"]["p50"]
            print(
                f"batch {size:>4}: prefill {row['prefill_latency_ms']['p50']:.1f} ms "
                f"({row['prefill_tokens_per_s']['p50']:.0f} tok/s), decode "
                + ("not resolved (raise --max-new-tokens)" if decode is None else
                   f"{decode:.2f} ms/token ({row['decode_tokens_per_s']['p50']:.0f} tok/s)"),
                file=sys.stderr,
            )  # fmt: skip
    except KeyboardInterrupt:
        interrupted = True  # the batch sizes measured so far are written below
    finally:
        describe = strategy.describe()
        strategy.close()
    env = measure.environment(sys.argv[1:] if argv is None else argv, module="llmopt.batchbench")
    device = measure.device_label(env["gpu"])
    gpu = roofline.gpu_for_device(device)
    if gpu is not None and describe.get("architecture"):
        fmt = roofline.weight_format(
            cls.name,
            describe.get("dtype"),
            describe.get("quantization") if isinstance(describe.get("quantization"), str) else None,
        )
        for row in rows:
            bound = roofline.least_time(roofline.Architecture(**describe["architecture"]), fmt, gpu,
                                        [[(args.prompt_tokens, args.new_tokens)] * row["batch_size"]])  # fmt: skip
            row["decode_floor_ms_per_token"] = 1000 * bound.decode.seconds / max(args.new_tokens - 1, 1)
            row["prefill_floor_ms"] = 1000 * bound.prefill.seconds
    summary = {
        "strategy": cls.name, "model": model, "weights": args.weights, "device": device, "engine": describe,
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "roofline_gpu": gpu.name if gpu else None,
        "prefix_caching": describe.get("prefix_caching", False),
        "method": "prefill = a 1-token call; decode = a full call minus the prefill of the same repeat, over the other "
                  "new tokens; warm-up at both lengths, untimed" + ("; vLLM prefix caching off" if cls.engine_batching else ""),
        "batches": rows,
        "interrupted": interrupted,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "summary.json", summary)
    (out / "env.json").write_text(json.dumps(env, indent=2) + "\n", encoding="utf-8")
    write_outputs(out, summary, args.plots)
    print(f"results: {out}")
    return cli.EXIT_INTERRUPTED if interrupted else cli.EXIT_OK


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


if __name__ == "__main__":
    sys.exit(cli.guarded(PROG, main))
